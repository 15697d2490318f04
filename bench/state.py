"""What exact client state costs: the same stateful client (tests/clients/stateful_client.py: a
BatchNorm CNN, Adam on the object, a cosine schedule, an RNG, a counter) on two HTEX sites of two
workers each, three ways:

- ``stateless``: the client's get_state/set_state switched off (what fedgrid did before: the state
  follows whichever worker runs the task, and is lost on resume);
- ``kept``: its state written after every answer and reloaded only when another worker held it;
- ``reload``: ``train.keep_clients: 1``, so every task rebuilds its client object and reads its state.

    python bench/state.py [--rounds 10] [--clients 8]

Reported: seconds a round (the median of rounds 2..N, the first pays the workers' start), the
state object's size, and the final federated accuracy. Results go to bench/results/state.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENTS = REPO / "tests" / "clients"
sys.path.insert(0, str(CLIENTS))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CLIENTS), os.environ.get("PYTHONPATH")) if p)

STATELESS = '''from stateful_client import StatefulClient


class Stateless(StatefulClient):
    get_state = None  # fedgrid then keeps nothing: the object on whichever worker is the state
'''


def run_one(work: Path, mode: str, rounds: int, clients: int) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    path = "bench_stateless:Stateless" if mode == "stateless" else "stateful_client:StatefulClient"
    per = clients // 2
    raw = {"name": f"state-{mode}", "rounds": rounds, "seed": 0, "client": path,
           "data": {"dataset": "digits", "clients": clients, "partition": {"kind": "dirichlet", "alpha": 0.5}},
           "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "keep_clients": 1 if mode == "reload" else 64},
           "round": {"min_clients": clients, "deadline_s": 120, "federated_every": rounds},
           "sites": [{"name": n, "executor": {"kind": "htex", "workers": 2}, "clients": per} for n in ("a", "b")],
           "checkpoint": {"dir": str(work / mode)}}
    t0 = time.perf_counter()
    rows = run(parse_job(raw), quiet=True).rows
    store = work / mode / "store"
    sizes = [p.stat().st_size for p in store.rglob("*") if p.is_file() and "state" in p.parts]
    out = {"round_s": statistics.median(r["seconds"] for r in rows[1:]), "total_s": round(time.perf_counter() - t0, 1),
           "state_bytes": statistics.median(sizes) if sizes else 0, "fed_accuracy": rows[-1].get("fed_accuracy")}
    print(f"{mode}: {out}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_stateless.py").write_text(STATELESS)
        sys.path.insert(0, tmp)
        os.environ["PYTHONPATH"] = tmp + os.pathsep + os.environ["PYTHONPATH"]
        for mode in ("stateless", "kept", "reload"):
            res[mode] = run_one(Path(tmp), mode, args.rounds, args.clients)
    out = REPO / "bench" / "results" / "state.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": res}, indent=1))
    print("| mode | s / round (median, rounds 2..) | state object | federated accuracy |\n|---|---|---|---|")
    for mode, r in res.items():
        fed = f"{r['fed_accuracy']:.4f}" if r["fed_accuracy"] is not None else "-"
        print(f"| {mode} | {r['round_s']:.3f} | {r['state_bytes'] / 1024:.1f} KiB | {fed} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
