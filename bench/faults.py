"""Fault-tolerance benchmark (issue 4): does training keep its accuracy through failures?

    python bench/faults.py [--rounds 10]

The fmnist example's workload (20 Dirichlet clients, cnn, 1 epoch) on two HTEX sites of one worker
each, run twice: fault-free, and with 30% of clients failing at random every round plus site `b`
lost from round 3 (its workers killed; its clients skipped as "site down"). Reports accuracy per
round and wall time for both, and the gap at the last round (target: within 2 points).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_job(work: Path, tag: str, rounds: int, faults: list[dict]) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.runner import run

    job = yaml.safe_load((REPO / "examples" / "fmnist.yaml").read_text())
    job.update(rounds=rounds, faults=faults, checkpoint={"dir": str(work / tag)},
               round={"fraction": 1.0, "min_clients": 4, "deadline_s": 300, "retries": 2},
               sites=[{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 10},
                      {"name": "b", "executor": {"kind": "htex", "workers": 1}, "clients": 10}])
    t0 = time.perf_counter()
    rows = run(parse_job(job, f"{tag}.yaml"), quiet=True).rows
    return {"seconds": time.perf_counter() - t0, "acc": [r["test_accuracy"] for r in rows],
            "ok": [r["clients_ok"] for r in rows]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    faults = [{"fail_p": 0.3}, {"site": "b", "lost_from": 3}]
    with tempfile.TemporaryDirectory() as d:
        clean = run_job(Path(d), "clean", args.rounds, [])
        faulty = run_job(Path(d), "faulty", args.rounds, faults)
    gap = (clean["acc"][-1] - faulty["acc"][-1]) * 100
    print("| fmnist, 2 HTEX sites x 1 worker | fault-free | 30% failing + site b lost from round 3 |")
    print("|---|---|---|")
    print(f"| rounds completed | {len(clean['acc'])} | {len(faulty['acc'])} |")
    print(f"| clients that answered per round | {', '.join(map(str, clean['ok']))} | "
          f"{', '.join(map(str, faulty['ok']))} |")
    print(f"| test accuracy per round | {', '.join(f'{a:.3f}' for a in clean['acc'])} | "
          f"{', '.join(f'{a:.3f}' for a in faulty['acc'])} |")
    print(f"| wall time | {clean['seconds']:.1f} s | {faulty['seconds']:.1f} s |")
    print(f"\nAccuracy at round {args.rounds}: {clean['acc'][-1]:.4f} vs {faulty['acc'][-1]:.4f}, "
          f"gap {gap:.2f} points (target <= 2)")
    return 0 if len(faulty["acc"]) == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
