"""Aggregation bandwidth and checkpoint throughput against plain memory and file I/O (issue 6).

    python bench/throughput.py [--updates 50] [--params 10_000_000] [--ckpt-params 100_000_000]

1. **Aggregation**: FedAvg (fedgrid's `weighted_mean`) over `--updates` client updates of
   `--params` float32 parameters, against a plain numpy copy of the same bytes (every update
   copied once into a preallocated buffer). Reports GB/s of update bytes consumed and the ratio.
2. **Checkpoint**: writing and reading one round of `--ckpt-params` float32 parameters with
   fedgrid's checkpoint (Arrow IPC, sha256 over the content, fsync, atomic rename; reading
   verifies the checksum) against a raw `write` + fsync and a raw `read` of the same bytes.

Best of `--repeat` runs each (the machine is shared); results go to bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def best(fn, repeat: int) -> float:  # noqa: ANN001 - a zero-argument callable
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_aggregate(updates: int, params: int, repeat: int) -> dict:
    from fedgrid.apps.update import ClientUpdate
    from fedgrid.flow.strategies.base import weighted_mean

    rng = np.random.default_rng(0)
    # a realistic layout: a few big tensors and some small ones
    sizes = [params // 2, params // 4, params // 8, params - params // 2 - params // 4 - params // 8 - 1000, 1000]
    like = OrderedDict((f"t{i}", np.zeros(n, np.float32)) for i, n in enumerate(sizes))
    base = rng.standard_normal(params, dtype=np.float32)
    ups = []
    for c in range(updates):
        flat = base + np.float32(c)  # distinct arrays: every update is its own memory
        parts, off = OrderedDict(), 0
        for name, n in zip(like, sizes, strict=True):
            parts[name] = flat[off:off + n]
            off += n
        ups.append(ClientUpdate(client=c, site="s", round=1, num_examples=100 + c, params=parts))
    nbytes = updates * params * 4
    sink = np.empty(params, np.float32)

    def copy_all() -> None:
        for u in ups:
            off = 0
            for a in u.params.values():
                sink[off:off + a.size] = a
                off += a.size

    t_copy = best(copy_all, repeat)
    t_agg = best(lambda: weighted_mean(ups, like), repeat)
    return {"updates": updates, "params": params, "bytes": nbytes, "copy_gbps": nbytes / t_copy / 1e9,
            "fedavg_gbps": nbytes / t_agg / 1e9, "fedavg_s": t_agg, "copy_s": t_copy, "ratio": t_copy / t_agg}


def bench_checkpoint(params: int, repeat: int, work: Path) -> dict:
    from fedgrid.flow.persist import checkpoint as ckpt

    rng = np.random.default_rng(1)
    n = params // 4
    arrays = OrderedDict((f"layer{i}.weight", rng.standard_normal(n, dtype=np.float32)) for i in range(4))
    nbytes = sum(a.nbytes for a in arrays.values())
    state = ckpt.RoundState(round=1, params=arrays, row={"round": 1})
    raw = work / "raw.bin"

    def raw_write() -> None:
        with open(raw, "wb") as f:
            for a in arrays.values():
                f.write(memoryview(a).cast("B"))
            f.flush()
            os.fsync(f.fileno())

    def raw_read() -> None:
        with open(raw, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(buf)

    t_raw_w = best(raw_write, repeat)
    t_raw_r = best(raw_read, repeat)
    t_w = best(lambda: ckpt.write_round(work, state), repeat)
    path = ckpt.round_path(work, 1)
    t_r = best(lambda: ckpt.read_round(path), repeat)
    return {"params": params, "bytes": nbytes, "raw_write_gbps": nbytes / t_raw_w / 1e9,
            "raw_read_gbps": nbytes / t_raw_r / 1e9, "write_gbps": nbytes / t_w / 1e9, "read_gbps": nbytes / t_r / 1e9,
            "write_ratio": t_raw_w / t_w, "read_ratio": t_raw_r / t_r}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=50)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--ckpt-params", type=int, default=100_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    res = {"date": time.strftime("%Y-%m-%d"), "aggregate": bench_aggregate(args.updates, args.params, args.repeat)}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as d:
        res["checkpoint"] = bench_checkpoint(args.ckpt_params, args.repeat, Path(d))
    out = REPO / "bench" / "results" / "throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    a, c = res["aggregate"], res["checkpoint"]
    print(f"| aggregation: FedAvg over {a['updates']} x {a['params'] / 1e6:.0f} M float32 | "
          f"{a['fedavg_gbps']:.2f} GB/s | copy {a['copy_gbps']:.2f} GB/s | ratio {a['ratio']:.2f} (target >= 0.5) |")
    print(f"| checkpoint write, {c['params'] / 1e6:.0f} M params ({c['bytes'] / 1e9:.1f} GB) | "
          f"{c['write_gbps']:.2f} GB/s | raw write+fsync {c['raw_write_gbps']:.2f} GB/s | "
          f"ratio {c['write_ratio']:.2f} (target >= 0.5) |")
    print(f"| checkpoint read + verify | {c['read_gbps']:.2f} GB/s | raw read {c['raw_read_gbps']:.2f} GB/s | "
          f"ratio {c['read_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
