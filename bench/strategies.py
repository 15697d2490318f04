"""Strategies under non-IID data and against bad updates (issue 5).

    python bench/strategies.py [--rounds 30] [--only fedavg,fedprox,...]     # the non-IID sweep
    python bench/strategies.py --tune                                        # the tuning grid (TUNE)
    python bench/strategies.py --byzantine [--rounds 20] [--clean]           # the attack
    python bench/strategies.py --defaults [--examples quickstart,...] [--only ...] [--keep]
                                     # every strategy's defaults on every example (bench/defaults.py)

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
# The tuning grid: every run is reported, not only the best (label -> strategy, settings). Server
# learning rates and momentum span the ranges the papers searched (Hsu et al. 2019: effective
# lr/(1-momentum) around 1-10; Reddi et al. 2021: eta 10^-2..10^-1 with tau 10^-3..10^-2).
TUNE: dict[str, tuple[str, dict]] = {
    "fedavgm m0.9 lr0.5": ("fedavgm", {"server_lr": 0.5, "momentum": 0.9}),
    "fedavgm m0.8 lr1": ("fedavgm", {"server_lr": 1.0, "momentum": 0.8}),
    "fedavgm m0.95 lr0.5": ("fedavgm", {"server_lr": 0.5, "momentum": 0.95}),
    "fedadam lr0.03": ("fedadam", {"server_lr": 0.03, "tau": 1e-3}),
    "fedadam lr0.1 tau0.01": ("fedadam", {"server_lr": 0.1, "tau": 1e-2}),
    "fedadam lr0.02": ("fedadam", {"server_lr": 0.02, "tau": 1e-3}),
    "fedadam lr0.05": ("fedadam", {"server_lr": 0.05, "tau": 1e-3}),
    "fedyogi lr0.03": ("fedyogi", {"server_lr": 0.03, "tau": 1e-3}),
    "fedprox mu0.1": ("fedprox", {"mu": 0.1}),
    "scaffold lr0.5": ("scaffold", {"server_lr": 0.5}),
    # issue 20: the server rate matched to FedAvg's first step (the new default), and client momentum
    "fedadam auto-lr": ("fedadam", {"tau": 1e-3}),
    "fedavg cm0.9": ("fedavg", {}),
    "fedadam lr0.03 cm0.9": ("fedadam", {"server_lr": 0.03, "tau": 1e-3}),
    "fedadam auto-lr cm0.9": ("fedadam", {"tau": 1e-3}),
    "fedavgm cm0.9": ("fedavgm", {}),
    "fedadam lr0.03 cosine": ("fedadam", {"server_lr": 0.03, "tau": 1e-3, "decay": "cosine"}),
    "fedadam lr0.05 cosine": ("fedadam", {"server_lr": 0.05, "tau": 1e-3, "decay": "cosine"}),
}
# client-side changes of some TUNE rows (everything else is the example's): "cm" is client momentum
CLIENT: dict[str, dict] = {"fedavg cm0.9": {"momentum": 0.9}, "fedadam lr0.03 cm0.9": {"momentum": 0.9},
                           "fedadam auto-lr cm0.9": {"momentum": 0.9}, "fedavgm cm0.9": {"momentum": 0.9}}
# Robust rules with server momentum (Karimireddy et al. 2021) or bucketing (2022): s = 2 keeps the
# bad buckets a minority at 20% bad clients; the trimmed mean must then cut 4 of 10 buckets at each
# end (beta 0.4)
ROBUST: dict[str, tuple[str, dict]] = {
    "median b2": ("median", {"bucket": 2}),
    "trimmed_mean b2": ("trimmed_mean", {"bucket": 2, "beta": 0.4}),
    "median m0.9": ("median", {"momentum": 0.9}),
    "trimmed_mean m0.9": ("trimmed_mean", {"beta": 0.2, "momentum": 0.9}),
    "krum m0.9": ("krum", {"byzantine": 4, "momentum": 0.9}),
}
VARIANTS: dict[str, tuple[str, dict]] = {**{n: (n, s) for n, s in SETTINGS.items()}, **TUNE, **ROBUST}
BAD = [1, 6, 11, 16]  # 20% of the clients, spread over the id range
ATTACKED = ["fedavg", "median", "trimmed_mean", "krum", "multikrum"]


def run_one(work: Path, tag: str, label: str, rounds: int, alpha: float, faults: list[dict], epochs: int = 1,
            fraction: float = 1.0) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    name, settings = VARIANTS[label]
    job = yaml.safe_load((REPO / "examples" / "fmnist.yaml").read_text())
    job["data"]["partition"] = {"kind": "dirichlet", "alpha": alpha}
    job.update(rounds=rounds, faults=faults, checkpoint={"dir": str(work / tag)},
               strategy={"name": name, **settings}, round={"fraction": fraction, "min_clients": 5})
    job["train"]["epochs"] = epochs
    job["train"].update(CLIENT.get(label, {}))
    from fedgrid.flow.rounds.runner import RoundFailed

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
    return {"acc": acc, "seconds": time.perf_counter() - t0, "strategy": name, "settings": settings,
            "client": CLIENT.get(label, {}), "alpha": alpha, "stopped": stopped}


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
    ap.add_argument("--tune", action="store_true", help="run the TUNE grid (non-IID)")
    ap.add_argument("--clean", action="store_true", help="with --byzantine: each rule's own clean run too")
    ap.add_argument("--keep", action="store_true", help="skip runs already in the results with these rounds")
    ap.add_argument("--epochs", type=int, default=1, help="local epochs (non-IID sweep; default the example's 1)")
    ap.add_argument("--fraction", type=float, default=1.0, help="share of clients per round (default all)")
    ap.add_argument("--out", default=None, help="results file (default bench/results/strategies.json)")
    ap.add_argument("--defaults", action="store_true", help="every strategy's defaults on every shipped example")
    ap.add_argument("--recheck", action="store_true", help="with --defaults: refresh the recorded warnings only")
    ap.add_argument("--examples", default=None, help="with --defaults: which examples (default all)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else REPO / "bench" / "results" / "strategies.json"
    if args.defaults:
        return _defaults(args, out)
    res: dict = json.loads(out.read_text()) if out.exists() else {}
    key = "byzantine" if args.byzantine else "non_iid" + (
        f"_e{args.epochs}_f{args.fraction:g}" if (args.epochs, args.fraction) != (1, 1.0) else "")
    rounds = args.rounds or (10 if args.byzantine else 30)
    names = args.only.split(",") if args.only else (
        ATTACKED if args.byzantine else list(TUNE) if args.tune else list(SETTINGS))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown strategy labels {unknown}; known: {list(VARIANTS)}")
    part = res.setdefault(key, {})
    res["date"] = time.strftime("%Y-%m-%d")
    out.parent.mkdir(parents=True, exist_ok=True)
    attack = [{"clients": BAD, "scale_update": -10.0}] if args.byzantine else []
    plan = ([("clean fedavg", "fedavg", [])] if args.byzantine else []) + [(n, n, attack) for n in names]
    if args.byzantine and args.clean:
        plan += [(f"clean {n}", n, []) for n in names if n != "fedavg"]
    with tempfile.TemporaryDirectory() as d:
        for label, name, faults in plan:
            if args.keep and len(part.get(label, {}).get("acc", [])) == rounds:
                continue
            part[label] = run_one(Path(d), label.replace(" ", "_") + ("_bad" if faults else ""), name, rounds,
                                  0.5 if args.byzantine else 0.1, faults, args.epochs, args.fraction)
            out.write_text(json.dumps(res, indent=1))  # after every run: a long sweep never loses its results
    shown = (["clean fedavg", *names, *(f"clean {n}" for n in names)] if args.byzantine else names)
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
            own = part.get(f"clean {n}", {}).get("acc", [None])[-1]
            print(f"- {n}: " + (f"{last:.4f}, {(last - clean) * 100:+.2f} points against clean FedAvg"
                                + (f", {(last - own) * 100:+.2f} against its own clean run" if own else "")
                                if last is not None else f"collapsed ({part[n]['stopped']})"))
    return 0


def _defaults(args: argparse.Namespace, out: Path) -> int:
    import defaults

    examples = args.examples.split(",") if args.examples else list(defaults.EXAMPLES)
    strategies = args.only.split(",") if args.only else defaults.STRATEGIES
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fedgrid-defaults-"))
    if args.recheck:
        res = json.loads(out.read_text())
        defaults.recheck(res["defaults"], work)
        out.write_text(json.dumps(res, indent=1))
        part = res["defaults"]
    else:
        part = defaults.sweep(examples, strategies, args.keep, out, work)
    print(defaults.table(part, examples, strategies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
