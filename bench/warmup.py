"""What the warm-up saves round 1 (issue 14): workers that loaded their client's data, built the
model and took one optimiser step before round 1, against workers that were not warmed.

    python bench/warmup.py [--repeat 3]

The fmnist example's model (the cnn) on digits, two htex sites of one worker each, one client per
site, so every round-1 task is the first task its worker trains. Per variant and repeat, a fresh
run of 2 rounds; reported: the round-1 clients' setup (load_s) and training (train_s) seconds, and
round 2's for comparison (every worker warm by then). Writes bench/results/warmup.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]


def one(work: Path, warmed: bool) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run
    from fedgrid.flow.rounds.sites import SiteRuntime

    job = parse_job({
        "name": "warmup", "rounds": 2, "model": "cnn",
        "data": {"dataset": "digits", "clients": 2, "partition": {"kind": "iid"}},
        "train": {"epochs": 1, "batch_size": 32},
        "round": {"min_clients": 2, "deadline_s": 600},
        "sites": [{"name": n, "executor": {"kind": "htex", "workers": 1}, "clients": 1} for n in ("a", "b")],
        "checkpoint": {"dir": str(work)},
    })
    warm_up = SiteRuntime.warm_up if warmed else (lambda self, task_for: [])
    with mock.patch.object(SiteRuntime, "warm_up", warm_up):
        rows = run(job, quiet=True, fresh=True).rows
    out = {}
    for r in rows:
        ups = r["updates"]
        out[r["round"]] = {"load_s": statistics.mean(u["load_s"] for u in ups),
                           "train_s": statistics.mean(u["train_s"] for u in ups),
                           "cold": sum(bool(u["cold"]) for u in ups)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"warmed": [], "not warmed": []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeat):  # alternating, so drifts of a shared machine hit both alike
            for name, warmed in (("warmed", True), ("not warmed", False)):
                runs[name].append(one(Path(d) / f"{i}-{warmed}", warmed))
    res = {"date": time.strftime("%Y-%m-%d"), "repeat": args.repeat, "runs": runs}
    out = REPO / "bench" / "results" / "warmup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print("| warm-up | round-1 load_s | round-1 train_s | round-2 train_s | cold round-1 tasks |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        med = {k: statistics.median(r[1][k] for r in rs) for k in ("load_s", "train_s")}
        print(f"| {name} | {med['load_s']:.3f} | {med['train_s']:.3f} | "
              f"{statistics.median(r[2]['train_s'] for r in rs):.3f} | {sum(r[1]['cold'] for r in rs)} of "
              f"{2 * len(rs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
