"""Heterogeneous sites (issue 4): plain FedAvg against deadline-aware pacing + FedNova.

    python bench/hetero.py [--rounds 10] [--quantile 0.5]

The fmnist workload (20 Dirichlet clients, cnn, 1 epoch) on three HTEX sites of one worker each,
slowed x1, x2 and x4 by fault injection (a slowed client sleeps (factor - 1) x its training time,
so the site's wall time is what a slower machine would give). Plain FedAvg runs `--rounds` rounds;
its last accuracy is the target. Then `round.pace: deadline` with FedNova runs until it reaches
that accuracy (at most 3x the rounds). Reports wall time to the target for both and the ratio
(issue target: <= 0.6).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def job_for(work: Path, tag: str, rounds: int, paced: bool, quantile: float) -> dict:
    job = yaml.safe_load((REPO / "examples" / "fmnist.yaml").read_text())
    job.update(rounds=rounds, checkpoint={"dir": str(work / tag)},
               sites=[{"name": "x1", "executor": {"kind": "htex", "workers": 1}, "clients": 7},
                      {"name": "x2", "executor": {"kind": "htex", "workers": 1}, "clients": 7},
                      {"name": "x4", "executor": {"kind": "htex", "workers": 1}, "clients": 6}],
               faults=[{"site": "x2", "slowdown": 2}, {"site": "x4", "slowdown": 4}])
    job["round"] = {"fraction": 1.0, "min_clients": 16, "deadline_s": 600}
    if paced:
        job["round"].update(pace="deadline", pace_quantile=quantile)
        job["strategy"] = {"name": "fednova"}
    return job


def curve(rows: list[dict]) -> list[tuple[float, float]]:
    """(seconds since the first round started, accuracy) after each round."""
    t0 = rows[0]["started_at"]
    return [(r["started_at"] + r["seconds"] - t0, r["test_accuracy"]) for r in rows]


def per_round(c: list[tuple[float, float]]) -> float:
    ends = [t for t, _ in c]
    gaps = sorted(b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True))
    return gaps[len(gaps) // 2]


def main() -> int:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.runner import run

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--quantile", type=float, default=0.5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        plain = curve(run(parse_job(job_for(Path(d), "plain", args.rounds, False, 0)), quiet=True).rows)
        target = plain[-1][1]
        paced_job = parse_job(job_for(Path(d), "paced", 3 * args.rounds, True, args.quantile))
        paced = curve(run(paced_job, quiet=True).rows)
    hit = next(((i + 1, t) for i, (t, a) in enumerate(paced) if a >= target), None)
    print("| 3 HTEX sites slowed x1, x2, x4; fmnist, 20 clients | plain FedAvg | pace: deadline + FedNova |")
    print("|---|---|---|")
    print(f"| seconds per round (median) | {per_round(plain):.2f} | {per_round(paced):.2f} |")
    accs = [", ".join(f"{a:.3f}" for _, a in c) for c in (plain, paced)]
    print(f"| accuracy per round | {accs[0]} | {accs[1]} |")
    print(f"| time to accuracy {target:.4f} | {plain[-1][0]:.1f} s (round {args.rounds}) | "
          + (f"{hit[1]:.1f} s (round {hit[0]}) |" if hit else "not reached |"))
    if hit:
        print(f"\nratio paced / plain: {hit[1] / plain[-1][0]:.2f} (target <= 0.6), pace_quantile {args.quantile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
