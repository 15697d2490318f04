"""What CurveZMQ encryption costs per MB of inline params (issue 27).

    python bench/encryption.py [--sizes 1 8 32] [--repeat 7]

fedgrid pins ``encrypted=True`` on every HighThroughputExecutor it builds, so params sent inline
(in the task and its result, not through a store) are encrypted twice each way: driver to
interchange and interchange to pool, and back. This times the round trip of a Parsl python_app
that receives a float32 numpy array of each size and returns it, on two local htex sites built by
fedgrid's own `htex.build` (one worker each) in one DataFlowKernel, one with ``encrypted`` as
built, one switched off before start. The two are run alternately, one task at a time, so the
drift of a shared machine hits both alike. Reported per size: the median seconds of each and the
extra milliseconds per MB; and the extra per MB from the slopes of a straight line through the
medians (which leaves out the fixed per-task cost, the same for both).

Writes bench/results/encryption.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


def measure(sizes: list[int], repeat: int, work: Path) -> dict[str, dict[int, list[float]]]:
    from parsl.app.app import python_app
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel

    from fedgrid.executors import htex

    exs = {name: htex.build(types.SimpleNamespace(name=name, executor=htex.Spec(kind="htex", workers=1)), work)
           for name in ("encrypted", "plain")}
    exs["plain"].encrypted = False  # the one difference: as Parsl runs with `encrypted=False`
    dfk = DataFlowKernel(Config(executors=list(exs.values()), strategy="none", run_dir=str(work / "parsl")))
    try:
        assert exs["encrypted"].cert_dir and exs["plain"].cert_dir is None  # (set at start)
        # np.asarray returns its argument: the array goes out in the task and comes back as its result
        echo = {name: python_app(np.asarray, executors=[name], data_flow_kernel=dfk) for name in exs}
        for app in echo.values():  # each worker's first task (the pool's start, imports) is not timed
            app(np.zeros(1, np.float32)).result(timeout=300)
        times: dict[str, dict[int, list[float]]] = {name: {mb: [] for mb in sizes} for name in exs}
        for i in range(repeat):
            for mb in sizes:
                x = np.random.default_rng(i).random(mb * MB // 4, dtype=np.float32)
                for name in (("encrypted", "plain") if i % 2 == 0 else ("plain", "encrypted")):
                    t0 = time.perf_counter()
                    y = echo[name](x).result(timeout=300)
                    times[name][mb].append(time.perf_counter() - t0)
                    assert y.nbytes == x.nbytes and y[-1] == x[-1]
        return times
    finally:
        dfk.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32], help="payload sizes, MB")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        times = measure(args.sizes, args.repeat, Path(d))
    med = {name: {mb: statistics.median(ts) for mb, ts in per.items()} for name, per in times.items()}
    per_mb = {mb: (med["encrypted"][mb] - med["plain"][mb]) / mb * 1e3 for mb in args.sizes}
    slopes = {name: statistics.linear_regression(args.sizes, [med[name][mb] for mb in args.sizes]).slope
              for name in med}  # seconds per MB
    res = {"date": time.strftime("%Y-%m-%d"), "repeat": args.repeat, "times_s": times, "median_s": med,
           "extra_ms_per_mb": per_mb, "slope_ms_per_mb": {k: v * 1e3 for k, v in slopes.items()},
           "extra_ms_per_mb_slope": (slopes["encrypted"] - slopes["plain"]) * 1e3}
    out = REPO / "bench" / "results" / "encryption.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print("| payload | encrypted: s / round trip | not encrypted: s / round trip | extra | extra per MB |")
    print("|---|---|---|---|---|")
    for mb in args.sizes:
        e, p = med["encrypted"][mb], med["plain"][mb]
        print(f"| {mb} MB | {e:.3f} | {p:.3f} | {(e - p) * 1e3:+.0f} ms ({(e / p - 1) * 100:+.0f}%) | "
              f"{per_mb[mb]:+.1f} ms |")
    print(f"\nslopes: encrypted {slopes['encrypted'] * 1e3:.1f} ms/MB, not encrypted {slopes['plain'] * 1e3:.1f} "
          f"ms/MB: encryption adds {res['extra_ms_per_mb_slope']:.1f} ms per MB ({args.repeat} repeats, medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
