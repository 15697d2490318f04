"""Compression, differential privacy and secure aggregation on the fmnist example (issue 8).

    python bench/traffic.py [--only plain,int8,topk,dp,secagg]

The fmnist example (20 Dirichlet-0.5 clients, the cnn, FedAvg, one HTEX site of 2 workers):
- plain: 30 rounds, the reference (its round 10 is the 10-round reference: runs are deterministic);
- int8: `compression: {up: int8, down: fp16}`, 10 rounds: bytes per round and accuracy at round 10;
- topk: `compression: {up: topk, topk_fraction: 0.01, dense_below: 0}` with error feedback, 30 rounds
  (every tensor sparsified); topk_dgc: the same with tensors under 1,024 elements sent whole;
- dp: central DP-FedAvg, clip 1.0, the noise multiplier that spends epsilon 8 (delta 1e-5) in 10
  rounds of all 20 clients, found with the same accountant; accuracy per round and epsilon;
- dp1000: the same DP settings over 1,000 clients (the same 60,000 images): the noise on the mean
  shrinks with the number of clients, which is why DP-FedAvg is run with many of them;
- secagg: secure aggregation, 10 rounds: accuracy against plain, seconds per round, bytes.

Results go to bench/results/traffic.json; Markdown for BENCHMARKS.md is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EPSILON, DELTA = 8.0, 1e-5


def noise_for(epsilon: float, rounds: int, q: float = 1.0) -> float:
    """The smallest noise multiplier whose epsilon after `rounds` stays within `epsilon` (bisection)."""
    from fedgrid.flow.privacy.dp import rdp_accountant

    def eps(z: float) -> float:
        acc = rdp_accountant()()
        acc.history = [(z, q, rounds)]
        return float(acc.get_epsilon(DELTA))

    lo, hi = 0.3, 20.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > epsilon else (lo, mid)
    return hi


def plans() -> dict[str, tuple[int, dict]]:
    return {
        "plain": (30, {}),
        "int8": (10, {"compression": {"up": "int8", "down": "fp16"}}),
        "topk": (30, {"compression": {"up": "topk", "topk_fraction": 0.01, "dense_below": 0}}),
        # small tensors (biases, the 650-param classifier) sent whole, as Deep Gradient Compression does
        "topk_dgc": (30, {"compression": {"up": "topk", "topk_fraction": 0.01, "dense_below": 1024}}),
        "dp": (10, {"privacy": {"mode": "central", "clip": 1.0, "noise_multiplier": round(noise_for(EPSILON, 10), 4),
                                "delta": DELTA}}),
        "dp1000": (10, {"privacy": {"mode": "central", "clip": 1.0,
                                    "noise_multiplier": round(noise_for(EPSILON, 10), 4), "delta": DELTA},
                        "data": {"clients": 1000}, "sites": [{"name": "cluster", "clients": 1000,
                                                              "executor": {"kind": "htex", "workers": 2}}],
                        "round": {"fraction": 1.0, "min_clients": 500, "deadline_s": 300}}),
        "secagg": (10, {"secagg": {"threshold": 0.5}}),
    }


def run_one(work: Path, name: str, rounds: int, extra: dict) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    job = yaml.safe_load((REPO / "examples" / "fmnist.yaml").read_text())
    extra = dict(extra)
    job["data"].update(extra.pop("data", {}))
    job.update(rounds=rounds, checkpoint={"dir": str(work / name)}, **extra)
    t0 = time.perf_counter()
    rows = run(parse_job(job, f"{name}.yaml"), quiet=True).rows
    out = {"settings": extra, "acc": [r["test_accuracy"] for r in rows], "seconds": time.perf_counter() - t0,
           "median_round_s": statistics.median(r["seconds"] for r in rows),
           "bytes_up_per_round": statistics.mean(r["bytes_up"] for r in rows),
           "bytes_down_per_round": statistics.mean(r["bytes_down"] for r in rows),
           "epsilon": [r.get("dp_epsilon") for r in rows]}
    print(f"{name}: {out['acc'][-1]:.4f} ({out['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    path = REPO / "bench" / "results" / "traffic.json"
    res: dict = json.loads(path.read_text()) if path.exists() else {}
    todo = plans()
    names = args.only.split(",") if args.only else list(todo)
    with tempfile.TemporaryDirectory() as d:
        for n in names:
            rounds, extra = todo[n]
            res[n] = run_one(Path(d), n, rounds, extra)
            res["date"] = time.strftime("%Y-%m-%d")
            path.write_text(json.dumps(res, indent=1))
    if "plain" not in res:
        return 0
    p = res["plain"]
    print("| run | settings | bytes up / round | bytes down / round | s/round | acc round 10 | acc round 30 |")
    print("|---|---|---|---|---|---|---|")
    for n in [k for k in todo if k in res]:
        r = res[n]
        a30 = f"{r['acc'][29]:.4f}" if len(r["acc"]) >= 30 else "-"
        print(f"| {n} | {json.dumps(r['settings']) if r['settings'] else 'defaults'} | "
              f"{r['bytes_up_per_round'] / 2**20:.2f} MiB ({p['bytes_up_per_round'] / r['bytes_up_per_round']:.2f}x "
              f"less) | {r['bytes_down_per_round'] / 2**20:.2f} MiB | {r['median_round_s']:.2f} | "
              f"{r['acc'][9]:.4f} ({(r['acc'][9] - p['acc'][9]) * 100:+.2f}) | {a30} |")
    if "dp" in res:
        print(f"\nDP: epsilon per round {', '.join(f'{e:.2f}' for e in res['dp']['epsilon'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
