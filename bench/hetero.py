"""Heterogeneous sites (issue 4): plain FedAvg, deadline-aware scheduling, and FedBuff.

    python bench/hetero.py [--rounds 10] [--deadline 4] [--pace] [--only plain,deadline,fedbuff]

The fmnist workload (20 Dirichlet clients, cnn, 1 epoch) on three HTEX sites of one worker each,
slowed x1, x2 and x4 by fault injection (a slowed client sleeps (factor - 1) x its training time,
so the site's wall time is what a slower machine would give). Three runs:

- plain: synchronous FedAvg for `--rounds` rounds; its last accuracy is the target;
- deadline: `round.select: deadline` with `round.deadline_s` `--deadline` (about the fast site's
  own round), FedAvg (or `--pace`: with pacing and FedNova), run for up to 2x the rounds; reports
  the wall time at which it first reaches the target (issue target <= 0.6 x plain);
- fedbuff: the asynchronous mode (buffer 5) for about plain's wall time, for the curves.

Prints Markdown for BENCHMARKS.md and writes bench/results/hetero.json with every curve
(seconds since the first round started, test accuracy).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SITES = [{"name": "x1", "executor": {"kind": "htex", "workers": 1}, "clients": 7},
         {"name": "x2", "executor": {"kind": "htex", "workers": 1}, "clients": 7},
         {"name": "x4", "executor": {"kind": "htex", "workers": 1}, "clients": 6}]


def job_for(work: Path, mode: str, rounds: int, args: argparse.Namespace) -> dict:
    job = yaml.safe_load((REPO / "examples" / "fmnist.yaml").read_text())
    job.update(rounds=rounds, checkpoint={"dir": str(work / mode)}, sites=SITES,
               faults=[{"site": "x2", "slowdown": 2}, {"site": "x4", "slowdown": 4}])
    job["round"] = {"fraction": 1.0, "min_clients": 16, "deadline_s": 600}
    if mode == "deadline":
        job["round"].update(select="deadline", deadline_s=args.deadline, min_clients=4)
        if args.pace:
            job["round"].update(pace="deadline", pace_quantile=args.quantile)
            job["strategy"] = {"name": "fednova"}
    elif mode == "fedbuff":
        job["round"].update(eval_every=4, deadline_s=120)
        job["strategy"] = {"name": "fedbuff", "buffer_size": 5}
    return job


def curve(rows: list[dict]) -> list[tuple[float, float]]:
    """(seconds since the first round started, accuracy) after each evaluated round."""
    t0 = rows[0]["started_at"]
    return [(r["started_at"] + r["seconds"] - t0, r["test_accuracy"]) for r in rows
            if r["test_accuracy"] is not None]


def per_round(rows: list[dict]) -> float:
    gaps = sorted(r["seconds"] for r in rows)
    return gaps[len(gaps) // 2]


def first_at(c: list[tuple[float, float]], target: float) -> tuple[int, float] | None:
    return next(((i + 1, t) for i, (t, a) in enumerate(c) if a >= target), None)


def main() -> int:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--quantile", type=float, default=0.5)
    ap.add_argument("--deadline", type=float, default=4.0)
    ap.add_argument("--pace", action="store_true")
    ap.add_argument("--fedbuff-steps", type=int, default=80)
    ap.add_argument("--only", default="plain,deadline,fedbuff", help="modes to run; others come from the last JSON")
    args = ap.parse_args()
    out = REPO / "bench" / "results" / "hetero.json"
    res: dict = json.loads(out.read_text()) if out.exists() else {}
    res.update({"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                "rounds": args.rounds, "deadline_s": args.deadline, "pace": args.pace,
                "pace_quantile": args.quantile})
    runs = {"plain": args.rounds, "deadline": 2 * args.rounds, "fedbuff": args.fedbuff_steps}
    with tempfile.TemporaryDirectory() as d:
        for mode in args.only.split(","):
            rows = run(parse_job(job_for(Path(d), mode, runs[mode], args)), quiet=True).rows
            res[mode] = {"curve": curve(rows), "seconds_per_round": per_round(rows),
                         "skipped": sum(len(r["skipped"]) for r in rows),
                         "steps": [[u["steps"] for u in r["updates"]] for r in rows[:3]]}
            print(f"{mode}: {len(rows)} rounds, last accuracy {rows[-1]['test_accuracy']:.4f}", file=sys.stderr)
    plain = res["plain"]["curve"]
    target, t_plain = plain[-1][1], plain[-1][0]
    for mode in ("deadline", "fedbuff"):
        hit = first_at(res[mode]["curve"], target)
        res[mode]["time_to_target"] = hit[1] if hit else None
        res[mode]["ratio"] = hit[1] / t_plain if hit else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))

    mode = (f"select: deadline, deadline_s {args.deadline:g}"
            + (", pace: deadline + FedNova" if args.pace else ", FedAvg"))
    print(f"| 3 HTEX sites slowed x1, x2, x4; fmnist, 20 clients | plain FedAvg | {mode} | FedBuff (K=5) |")
    print("|---|---|---|---|")
    print("| seconds per round / server step (median) | "
          + " | ".join(f"{res[m]['seconds_per_round']:.2f}" for m in ("plain", "deadline", "fedbuff")) + " |")
    cells = []
    for m in ("deadline", "fedbuff"):
        r = res[m]
        cells.append(f"{r['time_to_target']:.1f} s ({r['ratio']:.2f}x)" if r["ratio"] else "not reached")
    print(f"| time to accuracy {target:.4f} | {t_plain:.1f} s (round {args.rounds}) | {cells[0]} | {cells[1]} |")
    print(f"| clients skipped by selection | 0 | {res['deadline']['skipped']} | - |")
    print("\nAccuracy against wall time (s):\n")
    print("| mode | (seconds, accuracy) ... |\n|---|---|")
    for m in ("plain", "deadline", "fedbuff"):
        print(f"| {m} | " + ", ".join(f"{t:.0f}: {a:.3f}" for t, a in res[m]["curve"]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
