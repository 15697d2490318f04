"""Round overhead at scale (issue 6): what fedgrid itself costs per client, with training removed.

    python bench/overhead.py [--clients 10,100,1000,5000] [--rounds 4]

Each size runs in its own subprocess (so the driver's peak memory is its own): a synthetic job
(`dataset: synthetic`, 8 rows per client, an mlp of ~1.3k params) with `train.epochs: 0` — every
task is a real train app on a real HTEX site of 2 workers that loads its client's rows and
returns the global model without a step. All clients every round. Reports the median seconds per
round after the first, milliseconds per client, and the driver's peak RSS. Target: <= 2 ms per
client at 1,000 clients; 5,000 clients per round works. Writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one(clients: int, rounds: int, work: Path) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    job = parse_job({
        "name": f"overhead{clients}", "rounds": rounds, "model": {"name": "mlp", "kwargs": {"hidden": 64}},
        "data": {"dataset": "synthetic", "clients": clients, "samples_per_client": 8, "partition": {"kind": "iid"}},
        "train": {"epochs": 0}, "round": {"min_clients": clients, "deadline_s": 3600, "eval_every": rounds},
        "sites": [{"name": "htex", "executor": {"kind": "htex", "workers": 2}, "clients": clients}],
        "checkpoint": {"dir": str(work / str(clients))},
    })
    rows = run(job, quiet=True).rows
    per = statistics.median(r["seconds"] for r in rows[1:]) if len(rows) > 1 else rows[0]["seconds"]
    return {"clients": clients, "rounds": rounds, "seconds_per_round": per, "ms_per_client": per / clients * 1e3,
            "first_round_s": rows[0]["seconds"], "gather_s": statistics.median(r["gather_s"] for r in rows[1:]),
            "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ok": all(r["clients_ok"] == clients for r in rows)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="10,100,1000,5000")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(one(args.one, args.rounds, Path(d))))
        return 0
    res = []
    for n in (int(c) for c in args.clients.split(",")):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds)],
                             capture_output=True, text=True, check=True)
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{n} clients: {res[-1]['seconds_per_round']:.3f} s/round ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    path = REPO / "bench" / "results" / "overhead.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": res}, indent=1))
    print("| clients per round | s/round | ms per client | gather s | driver peak RSS | all answered |")
    print("|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['clients']:,} | {r['seconds_per_round']:.3f} | {r['ms_per_client']:.2f} | {r['gather_s']:.3f} | "
              f"{r['driver_peak_mb']:.0f} MB | {'yes' if r['ok'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
