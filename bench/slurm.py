"""fedgrid on the real one-node Slurm cluster of scripts/slurm-cluster.sh (issue 17).

    sudo scripts/slurm-cluster.sh start && python bench/slurm.py [--rounds 10]

1. The same job (digits, mlp, 2 clients, 1 epoch) with its one site on Slurm and on plain HTEX:
   seconds from `run()` to the end of round 1 (for Slurm: sbatch, the block starting, the worker
   pool connecting, a cold worker), and the median seconds per round after it.
2. The scancel drill: a two-site job (Slurm + HTEX), the Slurm block cancelled while round 3's
   clients are on it; the timeline from the site's events: loss noticed, replacement requested,
   site back, and the first round with the site's clients again.

Writes bench/results/slurm.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import save_result  # noqa: E402 - bench/ is the script's own folder

VENV_BIN = Path(sys.executable).parent


def slurm_site(clients: int) -> dict:
    return {"name": "cluster", "clients": clients, "executor": {
        "kind": "slurm", "partition": "debug", "launcher": "single", "exclusive": False, "address": "127.0.0.1",
        "walltime": "00:10:00", "workers_per_node": 1, "worker_init": f"source {VENV_BIN / 'activate'}",
        "status_poll_s": 2, "heartbeat_period": 2, "heartbeat_threshold": 10}}


def job(run_dir: Path, rounds: int, sites: list, faults: list | None = None) -> dict:
    return {"name": "bench", "rounds": rounds, "seed": 0, "model": "mlp",
            "data": {"dataset": "digits", "clients": sum(s["clients"] for s in sites), "partition": {"kind": "iid"}},
            "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}, "round": {"min_clients": 2, "deadline_s": 60},
            "sites": sites, "checkpoint": {"dir": str(run_dir)}, "faults": faults or []}


def first_round(work: Path, rounds: int) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    out = {}
    for kind, site in (("slurm", slurm_site(2)),
                       ("htex", {"name": "cluster", "clients": 2, "executor": {"kind": "htex", "workers": 1}})):
        t0 = time.time()
        rows = run(parse_job(job(work / kind, rounds, [site])), quiet=True).rows
        out[kind] = {"to_round_1_s": round(rows[0]["started_at"] + rows[0]["seconds"] - t0, 2),
                     "median_s_per_round": round(statistics.median(r["seconds"] for r in rows[1:]), 3)}
    return out


def scancel_drill(work: Path) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    run_dir = work / "drill"
    spec = job(run_dir, 8, [slurm_site(2), {"name": "local", "clients": 2, "executor": {"kind": "htex", "workers": 1}}],
               [{"delay_s": 1.0}, {"site": "cluster", "hold_at": [3]}])
    res: dict = {}
    t = threading.Thread(target=lambda: res.update(r=run(parse_job(spec), quiet=True)), daemon=True)
    t.start()
    while not (run_dir / "faults" / "started-r000003").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    events = json.loads((run_dir / "sites.json").read_text())["cluster"]["events"]
    first = next(e["job"] for e in events if e["event"] == "started")
    cancelled = time.time()
    subprocess.run(["scancel", first], check=True)
    t.join(300)
    rows = res["r"].rows
    events = json.loads((run_dir / "sites.json").read_text())["cluster"]["events"]
    at = {e["event"]: e["at"] for e in reversed(events)}
    back_round = next(r for r in rows[3:] if any(u["site"] == "cluster" for u in r["updates"]))
    return {"loss_noticed_s": round(at["lost"] - cancelled, 2),
            "replacement_requested_s": round(at["requested"] - cancelled, 2),
            "site_back_s": round(at["back"] - cancelled, 2),
            "round_3_s": round(rows[2]["seconds"], 2),
            "first_round_back": back_round["round"],
            "first_round_back_ends_s": round(back_round["started_at"] + back_round["seconds"] - cancelled, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = {"first_round": first_round(Path(d), a.rounds), "scancel": scancel_drill(Path(d))}
    save_result("slurm", out)


if __name__ == "__main__":
    main()
