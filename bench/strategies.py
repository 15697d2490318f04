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
    t0 = time.perf_counter()
    rows = run(parse_job(job, f"{tag}.yaml"), quiet=True).rows
    print(f"{tag}: {rows[-1]['test_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return {"acc": [r["test_accuracy"] for r in rows], "seconds": time.perf_counter() - t0,
            "settings": SETTINGS[name], "alpha": alpha}


def table(res: dict, names: list[str], rounds: int, key: str) -> None:
    marks = [r for r in (1, 5, 10, 20, 30) if r <= rounds]
    print(f"| strategy ({key}) | settings | " + " | ".join(f"round {r}" for r in marks) + " |")
    print("|---|---|" + "---|" * len(marks))
    for n in names:
        acc = res[n]["acc"]
        print(f"| {n} | {json.dumps(res[n]['settings']) if res[n]['settings'] else 'defaults'} | "
              + " | ".join(f"{acc[r - 1]:.4f}" for r in marks) + " |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--byzantine", action="store_true")
    args = ap.parse_args()
    out = REPO / "bench" / "results" / "strategies.json"
    res: dict = json.loads(out.read_text()) if out.exists() else {}
    key = "byzantine" if args.byzantine else "non_iid"
    rounds = args.rounds or (20 if args.byzantine else 30)
    names = args.only.split(",") if args.only else (ATTACKED if args.byzantine else list(SETTINGS))
    part = res.setdefault(key, {})
    with tempfile.TemporaryDirectory() as d:
        if args.byzantine:
            part["clean fedavg"] = run_one(Path(d), "clean", "fedavg", rounds, 0.5, [])
            for n in names:
                part[n] = run_one(Path(d), n, n, rounds, 0.5, [{"clients": BAD, "scale_update": -10.0}])
        else:
            for n in names:
                part[n] = run_one(Path(d), n, n, rounds, 0.1, [])
    res["date"] = time.strftime("%Y-%m-%d")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    shown = (["clean fedavg", *names] if args.byzantine else names)
    table(part, [n for n in shown if n in part], rounds, key)
    if not args.byzantine and "fedavg" in part:
        base = part["fedavg"]["acc"][-1]
        best = max(part, key=lambda n: part[n]["acc"][-1])
        print(f"\nbest at round {rounds}: {best} {part[best]['acc'][-1]:.4f}, "
              f"{(part[best]['acc'][-1] - base) * 100:+.2f} points over FedAvg (target >= +3)")
    if args.byzantine:
        clean = part["clean fedavg"]["acc"][-1]
        for n in names:
            print(f"- {n}: {part[n]['acc'][-1]:.4f}, {(part[n]['acc'][-1] - clean) * 100:+.2f} points "
                  f"against the clean run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
