"""Site-kind and data-plane benchmarks (never run by `make test`); prints Markdown for BENCHMARKS.md.

    python bench/sites.py                # both
    python bench/sites.py --rounds 5 --mb 100

1. **gc overhead**: the fmnist example on its 2-worker HTEX site, then the same job with that site
   as an emulated Globus Compute endpoint (a GlobusComputeEngine with 2 workers, every task and
   result through the sdk's serializer and the Task/Result messages). The difference in median
   seconds per round is what the Globus Compute path costs, the hosted service's hop excluded.
2. **by reference**: a model of `--mb` MB of float32 params sent to the emulated endpoint by
   reference and an update of the same size sent back by reference, as a round does it: the driver
   writes and hashes the global params, the site fetches and verifies them, writes its update, and
   the driver fetches and verifies that. Reported as MB/s over the bytes moved, against a plain
   file write + read of the same bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import bench_fmnist  # noqa: E402 - bench/ is a folder of scripts, not a package


def bench_gc_overhead(rounds: int, workdir: Path) -> dict:
    htex = bench_fmnist(rounds, workdir, {"kind": "htex", "workers": 2}, "htex")
    gc = bench_fmnist(rounds, workdir, {"kind": "globus_compute", "emulate": True, "workers": 2}, "gc")
    return {"htex": htex, "gc": gc}


def bench_by_reference(mb: int, workdir: Path, repeats: int = 3) -> dict:
    from parsl.app.app import python_app
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel

    from fedgrid.apps.store import Store, fetch, relay
    from fedgrid.executors import globus_compute as gc

    n = mb * 2**20 // 4
    params = {"w": np.random.default_rng(0).standard_normal(n, dtype=np.float32)}
    store = Store(str(workdir / "store"))
    site = types.SimpleNamespace(name="gc", executor=gc.Spec(emulate=True, workers=1))
    dfk = DataFlowKernel(Config(executors=[gc.build(site, workdir)], strategy="none",
                                run_dir=str(workdir / "parsl")))
    try:
        app = python_app(relay, executors=["gc"], data_flow_kernel=dfk)
        small = store.put({"w": np.zeros(4, dtype=np.float32)}, "warm")
        app(small, store.url, "warm-back").result()  # engine up, worker warm
        runs = []
        for i in range(repeats):
            t0 = time.perf_counter()
            ref = store.put(params, f"r{i}/global")
            back, site_s = app(ref, store.url, f"r{i}/update").result()
            got = fetch(back)
            total = time.perf_counter() - t0
            assert got["w"].shape == params["w"].shape
            # the same path with empty payloads: what the task itself costs
            t1 = time.perf_counter()
            app(small, store.url, f"r{i}/empty").result()
            runs.append({"total_s": total, "task_s": time.perf_counter() - t1, "site_s": site_s,
                         "nbytes": ref.nbytes + back.nbytes})
            store.delete(f"r{i}")
    finally:
        dfk.cleanup()
    raw = workdir / "raw.bin"
    t0 = time.perf_counter()
    raw.write_bytes(params["w"].tobytes())
    raw.read_bytes()
    raw_s = time.perf_counter() - t0
    best = min(runs, key=lambda r: r["total_s"])
    return {"mb": mb, "best": best, "median_total_s": statistics.median(r["total_s"] for r in runs),
            "raw_write_read_s": raw_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--only", choices=["gc", "ref"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.only in (None, "gc"):
            r = bench_gc_overhead(args.rounds, Path(d))
            h, g = r["htex"], r["gc"]
            print("| fmnist example, 2 workers | htex | globus_compute (emulated) |\n|---|---|---|")
            print(f"| median seconds per round | {h['median_round_s']:.2f} | {g['median_round_s']:.2f} |")
            print(f"| command start to round-1 checkpoint | {h['first_round_s']:.1f} s | {g['first_round_s']:.1f} s |")
            print(f"| total wall time, {args.rounds} rounds | {h['total_s']:.1f} s | {g['total_s']:.1f} s |")
            print(f"| test accuracy at round {args.rounds} | {h['accuracy'][-1]:.4f} | {g['accuracy'][-1]:.4f} |")
            print(f"\nGlobus Compute path overhead: {g['median_round_s'] - h['median_round_s']:+.2f} s per round "
                  f"({g['median_round_s'] / h['median_round_s']:.2f}x)\n")
        if args.only in (None, "ref"):
            r = bench_by_reference(args.mb, Path(d))
            b = r["best"]
            moved = b["nbytes"] / 2**20
            print(f"| {r['mb']} MB model by reference through the emulated endpoint | value |\n|---|---|")
            print(f"| bytes moved (params down + update up) | {moved:.0f} MB |")
            print(f"| round trip, best of 3 (median) | {b['total_s']:.2f} s ({r['median_total_s']:.2f} s) |")
            print(f"| same task with empty payloads | {1000 * b['task_s']:.0f} ms |")
            print(f"| at the site: fetch+verify, write+hash | {b['site_s'][0]:.2f} s, {b['site_s'][1]:.2f} s |")
            print(f"| by-reference rate | {moved / b['total_s']:.0f} MB/s "
                  f"({moved / max(b['total_s'] - b['task_s'], 1e-9):.0f} MB/s net of the task) |")
            print(f"| plain file write + read of {r['mb']} MB | {r['raw_write_read_s']:.2f} s "
                  f"({2 * r['mb'] / r['raw_write_read_s']:.0f} MB/s) |")


if __name__ == "__main__":
    main()
