"""Strategies under non-IID data and against bad updates (issue 5).

    python bench/strategies.py [--rounds 30] [--only fedavg,fedprox,...]     # the non-IID sweep
    python bench/strategies.py --byzantine [--rounds 20]                     # the attack

Sweep: Fashion-MNIST, 20 clients, Dirichlet alpha = 0.1 (most clients hold one or two classes),
cnn, 1 local epoch, lr 0.05, every client every round, on one HTEX site of 2 workers; every
strategy with the settings in SETTINGS, accuracy per round. Attack: the fmnist example (Dirichlet
0.5), 4 of 20 clients (20%) send ``G - 10 (x - G)`` (sign-flipped, x10) every round; FedAvg,
median, trimmed mean, Krum and multi-Krum against the clean FedAvg run.

Results merge into bench/results/strategies.json; Markdown for BENCHMARKS.md is printed.
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
SETTINGS: dict[str, dict] = {
    "fedavg": {},
    "fedavgm": {"server_lr": 1.0, "momentum": 0.9},
    "fedprox": {"mu": 0.01},
    "fedadam": {"server_lr": 0.01, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.01, "tau": 1e-3},
    "fedadagrad": {"server_lr": 0.01, "tau": 1e-3},
    "scaffold": {},
    "fednova": {},
    "median": {},
    "trimmed_mean": {"beta": 0.2},
    "krum": {"byzantine": 4},
    "multikrum": {"byzantine": 4},
}
BAD = [1, 6, 11, 16]  # 20% of the clients, spread over the id range
ATTACKED = ["fedavg", "median", "trimmed_mean", "krum", "multikrum"]


def run_one(work: Path, tag: str, name: str, rounds: int, alpha: float, faults: list[dict]) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.runner import run

    job = yaml.safe_load((REPO / "examples" / "fmnist.yaml").read_text())
    job["data"]["partition"] = {"kind": "dirichlet", "alpha": alpha}
    job.update(rounds=rounds, faults=faults, checkpoint={"dir": str(work / tag)},
               strategy={"name": name, **SETTINGS[name]}, round={"fraction": 1.0, "min_clients": 10})
    from fedgrid.flow.runner import RoundFailed

    t0 = time.perf_counter()
    stopped = None
    try:
        rows = run(parse_job(job, f"{tag}.yaml"), quiet=True).rows
    except RoundFailed as e:  # e.g. FedAvg under attack: the model blows up and every client diverges
        import pyarrow.parquet as pq

        rows = pq.read_table(work / tag / "rounds.parquet").to_pylist()
        stopped = str(e).split(";")[0]
    acc = [r["test_accuracy"] for r in rows] + [None] * (rounds - len(rows))
    print(f"{tag}: {acc[-1]} ({time.perf_counter() - t0:.0f} s){' STOPPED ' + stopped if stopped else ''}",
          file=sys.stderr, flush=True)
    return {"acc": acc, "seconds": time.perf_counter() - t0, "settings": SETTINGS[name], "alpha": alpha,
            "stopped": stopped}


def table(res: dict, names: list[str], rounds: int, key: str) -> None:
    marks = [r for r in (1, 5, 10, 20, 30) if r <= rounds]
    print(f"| strategy ({key}) | settings | " + " | ".join(f"round {r}" for r in marks) + " |")
    print("|---|---|" + "---|" * len(marks))
    for n in names:
        acc = res[n]["acc"]
        print(f"| {n} | {json.dumps(res[n]['settings']) if res[n]['settings'] else 'defaults'} | "
              + " | ".join(f"{acc[r - 1]:.4f}" if acc[r - 1] is not None else "stopped" for r in marks) + " |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--byzantine", action="store_true")
    args = ap.parse_args()
    out = REPO / "bench" / "results" / "strategies.json"
    res: dict = json.loads(out.read_text()) if out.exists() else {}
    key = "byzantine" if args.byzantine else "non_iid"
    rounds = args.rounds or (10 if args.byzantine else 30)
    names = args.only.split(",") if args.only else (ATTACKED if args.byzantine else list(SETTINGS))
    part = res.setdefault(key, {})
    res["date"] = time.strftime("%Y-%m-%d")
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = ([("clean fedavg", "fedavg", [])] if args.byzantine else []) + [
        (n, n, [{"clients": BAD, "scale_update": -10.0}] if args.byzantine else []) for n in names]
    with tempfile.TemporaryDirectory() as d:
        for label, name, faults in plan:
            part[label] = run_one(Path(d), name.replace(" ", "_") + ("_bad" if faults else ""), name, rounds,
                                  0.5 if args.byzantine else 0.1, faults)
            out.write_text(json.dumps(res, indent=1))  # after every run: a long sweep never loses its results
    shown = (["clean fedavg", *names] if args.byzantine else names)
    table(part, [n for n in shown if n in part], rounds, key)
    if not args.byzantine and "fedavg" in part:
        base = part["fedavg"]["acc"][-1]
        best = max(part, key=lambda n: part[n]["acc"][-1] or 0.0)
        print(f"\nbest at round {rounds}: {best} {part[best]['acc'][-1]:.4f}, "
              f"{(part[best]['acc'][-1] - base) * 100:+.2f} points over FedAvg (target >= +3)")
    if args.byzantine:
        clean = part["clean fedavg"]["acc"][-1]
        for n in names:
            last = part[n]["acc"][-1]
            print(f"- {n}: " + (f"{last:.4f}, {(last - clean) * 100:+.2f} points against the clean run" if last
                               is not None else f"collapsed ({part[n]['stopped']})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
