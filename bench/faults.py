"""Fault-tolerance benchmark (issue 4): does training keep its accuracy through failures?

    python bench/faults.py [--rounds 10] [--max-staleness 10]

The fmnist example's workload (20 Dirichlet clients, cnn, 1 epoch) on two HTEX sites of one worker
each, run four times: fault-free; with 30% of clients failing at random every round plus site `b`
lost from round 3 for good (its workers killed; its clients fail as "site down"); the same with
site `b` back from round 6 (a new block); and the permanent loss with `round.absent: reuse`
(MIFA: an absent client's last update stands in for it, staleness-weighted, for up to
--max-staleness rounds). Reports accuracy per round and wall time, and the gap at the last round
(target: within 2 points). Writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FAULTS = [{"fail_p": 0.3}, {"site": "b", "lost_from": 3}]
BACK = [{"fail_p": 0.3}, {"site": "b", "lost_from": 3, "lost_until": 6}]


def run_job(work: Path, tag: str, rounds: int, faults: list[dict], **round_over) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    job = yaml.safe_load((REPO / "examples" / "fmnist.yaml").read_text())
    job.update(rounds=rounds, faults=faults, checkpoint={"dir": str(work / tag)},
               round={"fraction": 1.0, "min_clients": 4, "deadline_s": 300, "retries": 2, **round_over},
               sites=[{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 10},
                      {"name": "b", "executor": {"kind": "htex", "workers": 1}, "clients": 10}])
    t0 = time.perf_counter()
    rows = run(parse_job(job, f"{tag}.yaml"), quiet=True).rows
    return {"seconds": time.perf_counter() - t0, "acc": [r["test_accuracy"] for r in rows],
            "ok": [r["clients_ok"] for r in rows], "reused": [len(r["reused"]) for r in rows]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--max-staleness", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = {"clean": run_job(Path(d), "clean", args.rounds, []),
               "faulty": run_job(Path(d), "faulty", args.rounds, FAULTS),
               "back": run_job(Path(d), "back", args.rounds, BACK),
               "reuse": run_job(Path(d), "reuse", args.rounds, FAULTS, absent="reuse",
                                max_staleness=args.max_staleness)}
    res["date"] = time.strftime("%Y-%m-%d")
    out = REPO / "bench" / "results" / "faults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    cols = ("clean", "faulty", "back", "reuse")
    print("| fmnist, 2 HTEX sites x 1 worker | fault-free | 30% failing + site b lost from round 3 "
          f"| same, site b back in round 6 | lost for good, absent: reuse (max_staleness {args.max_staleness}) |")
    print("|---|---|---|---|---|")
    print("| rounds completed | " + " | ".join(str(len(res[c]["acc"])) for c in cols) + " |")
    print("| clients that answered per round | " + " | ".join(", ".join(map(str, res[c]["ok"])) for c in cols) + " |")
    print("| stand-ins per round | - | - | - | " + ", ".join(map(str, res["reuse"]["reused"])) + " |")
    print("| test accuracy per round | " + " | ".join(", ".join(f"{a:.3f}" for a in res[c]["acc"]) for c in cols)
          + " |")
    print("| wall time | " + " | ".join(f"{res[c]['seconds']:.1f} s" for c in cols) + " |")
    clean = res["clean"]["acc"][-1]
    for c in ("faulty", "back", "reuse"):
        print(f"\n{c}: accuracy at round {args.rounds} {res[c]['acc'][-1]:.4f} against {clean:.4f}, "
              f"gap {(clean - res[c]['acc'][-1]) * 100:.2f} points (target <= 2)")
    return 0 if all(len(res[c]["acc"]) == args.rounds for c in cols) else 1


if __name__ == "__main__":
    sys.exit(main())
