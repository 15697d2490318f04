"""Personalization on a feature-skewed split: FedAvg, FedBN, FedPer and Ditto, each client scored
on its own held-out rows with the global model and with its personalized one.

    python bench/personal.py [--rounds 20] [--epochs 2] [--seeds 3] [--only fedavg,fedbn,fedper,ditto]

The setting of FedBN (Li et al., ICLR 2021): every site sees the same task through its own
"scanner" (``sites.<name>.data.skew``, applied at the site), labels split IID, so the only
heterogeneity is in the inputs. digits, 12 clients, 3 on each of 4 thread (`local`) sites; site 0
sees the digits as they are, site 1 turned 90 degrees, site 2 turned 180 degrees at half contrast,
site 3 brightened by 0.5 with Gaussian noise (std 0.1). The built-in ``cnn`` with ``norm: batch``,
2 local epochs of SGD (lr 0.05, momentum 0.9, batch 32) a round, every client every round, and
federated evaluation of every client every round on the 20% of its rows it holds out
(``data.holdout: 0.2``, about 24 digits a client). Only the ``personal:`` block differs between
the runs, each repeated with job seeds 0, 1, 2 (the split, the held-out rows, the initial model and
the noise all follow the seed):

- fedavg: none (the personalized model is the global one)
- fedbn: ``layers: [norm]`` (the BatchNorm layers stay at each client)
- fedper: ``layers: ["<last linear>.*"]`` (a personal head: the model's last linear layer)
- ditto: ``ditto: {lam: 0.1, epochs: 1}``

Reported at the last round: ``fed_accuracy`` and ``fed_accuracy_min`` (the global model, mean over
clients weighted by examples, and worst client), ``fed_personal_accuracy`` and
``fed_personal_accuracy_min`` (each client's personalized model), the central test accuracy of the
global model on the driver's test set (never skewed), and the mean seconds a round took to train
(row ``seconds``) and to evaluate (``fed_s``): mean over the seeds, with their range. Per site,
the mean of its clients' accuracies (and over the seeds).

Results go to bench/results/personal.json; the Markdown tables for BENCHMARKS.md are printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = {"name": "cnn", "kwargs": {"norm": "batch"}}
# site name -> its data.skew (None: the digits as they are)
SKEWS: dict[str, dict[str, float] | None] = {
    "site0": None,
    "site1": {"rotate": 90},
    "site2": {"rotate": 180, "scale": 0.5},
    "site3": {"shift": 0.5, "noise": 0.1},
}
CLIENTS_PER_SITE = 3
SETTINGS = ["fedavg", "fedbn", "fedper", "ditto"]


def last_linear() -> str:
    """The glob pattern of the model's last linear layer (FedPer's head), read from the model
    itself so the bench follows any change to the built-in cnn's layout."""
    from torch import nn

    from fedgrid.apps.models import build

    model = build(MODEL["name"], (1, 8, 8), 10, MODEL["kwargs"])
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return f"{name}.*"


def personal_block(setting: str) -> dict[str, Any] | None:
    return {"fedavg": None, "fedbn": {"layers": ["norm"]}, "fedper": {"layers": [last_linear()]},
            "ditto": {"ditto": {"lam": 0.1, "epochs": 1}}}[setting]


def job(work: Path, setting: str, rounds: int, epochs: int, seed: int) -> dict[str, Any]:
    clients = CLIENTS_PER_SITE * len(SKEWS)
    raw: dict[str, Any] = {
        "name": f"personal-{setting}", "rounds": rounds, "seed": seed, "model": MODEL,
        "data": {"dataset": "digits", "clients": clients, "partition": {"kind": "iid"}, "holdout": 0.2},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
        "strategy": {"name": "fedavg"},
        "round": {"min_clients": clients, "deadline_s": 300, "federated_every": 1, "federated_fraction": 1.0},
        "sites": [{"name": name, "executor": {"kind": "local", "workers": 1}, "clients": CLIENTS_PER_SITE,
                   "data": {"skew": skew} if skew else {}} for name, skew in SKEWS.items()],
        "checkpoint": {"dir": str(work / f"{setting}-{seed}")},
    }
    if (block := personal_block(setting)) is not None:
        raw["personal"] = block
    return raw


def per_site(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each site's example-weighted mean accuracy, global and personalized, from ``fed_clients``."""
    out: dict[str, dict[str, float]] = {}
    for site in SKEWS:
        mine = [c for c in row["fed_clients"] if c["site"] == site]
        w = np.array([c["examples"] for c in mine], dtype=np.float64)
        for key in ("accuracy", "personal_accuracy"):
            vals = [next((m["value"] for m in c["metrics"] if m["name"] == key), None) for c in mine]
            if mine and None not in vals:
                out.setdefault(site, {})[key] = float((np.array(vals) * w).sum() / w.sum())
    return out


def run_one(work: Path, setting: str, rounds: int, epochs: int, seed: int) -> dict[str, Any]:
    """One real run (fedgrid.run on thread sites) of `setting`; what its rounds table says."""
    import fedgrid
    from fedgrid.flow.config import parse_job

    t0 = time.perf_counter()
    raw = job(work, setting, rounds, epochs, seed)
    rows = fedgrid.run(parse_job(raw, f"{setting}-{seed}.yaml"), quiet=True).rows
    wall = time.perf_counter() - t0
    last = rows[-1]
    # without personalization the client's own model is the global one
    personal = "fed_personal_accuracy" if "fed_personal_accuracy" in last else "fed_accuracy"

    def series(key: str) -> list[float | None]:
        return [None if r.get(key) is None else float(r[key]) for r in rows]

    out = {
        "seed": seed,
        "fed_accuracy": series("fed_accuracy"), "fed_accuracy_min": series("fed_accuracy_min"),
        "fed_personal_accuracy": series(personal), "fed_personal_accuracy_min": series(personal + "_min"),
        "test_accuracy": series("test_accuracy"),
        "round_s": float(np.mean([r["seconds"] for r in rows])), "fed_s": float(np.mean([r["fed_s"] for r in rows])),
        "wall_s": round(wall, 1), "sites": per_site(last),
    }
    print(f"{setting} seed {seed}: global {out['fed_accuracy'][-1]:.4f} personal "
          f"{out['fed_personal_accuracy'][-1]:.4f} ({wall:.0f} s)", file=sys.stderr, flush=True)
    return out


LAST = ["fed_accuracy", "fed_accuracy_min", "fed_personal_accuracy", "fed_personal_accuracy_min", "test_accuracy"]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over a setting's seeds: each last-round value's mean, min and max; the mean timings; each
    site's mean accuracies."""
    out: dict[str, Any] = {}
    for key in LAST:
        vals = [r[key][-1] for r in runs]
        out[key] = None if None in vals else {"mean": float(np.mean(vals)), "min": min(vals), "max": max(vals)}
    out["round_s"] = float(np.mean([r["round_s"] for r in runs]))
    out["fed_s"] = float(np.mean([r["fed_s"] for r in runs]))
    # a site whose clients all failed to evaluate in some seed is left out of that seed's mean
    out["sites"] = {s: {k: float(np.mean([r["sites"][s][k] for r in runs if k in r["sites"].get(s, {})]))
                        for k in ("accuracy", "personal_accuracy") if any(k in r["sites"].get(s, {}) for r in runs)}
                    for s in SKEWS}
    return out


def _cell(v: dict[str, float] | None) -> str:
    if v is None:
        return "—"
    if v["min"] == v["max"]:
        return f"{v['mean']:.3f}"
    return f"{v['mean']:.3f} ({v['min']:.2f}–{v['max']:.2f})"


def table(res: dict[str, dict[str, Any]]) -> str:
    lines = ["| setting | `personal:` | global: mean | global: worst client | personalized: mean "
             "| personalized: worst client | central test (unskewed) | train s / round | fed eval s / round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        s = r["summary"]
        block = "none" if r["personal"] is None else "`" + str(r["personal"]).replace("'", "") + "`"
        # without personalization the client's model is the global one: same numbers, said so
        own = ("= global", "= global") if r["personal"] is None else (
            _cell(s["fed_personal_accuracy"]), _cell(s["fed_personal_accuracy_min"]))
        lines.append(f"| {name} | {block} | {_cell(s['fed_accuracy'])} | {_cell(s['fed_accuracy_min'])} | "
                     f"{own[0]} | {own[1]} | {_cell(s['test_accuracy'])} | {s['round_s']:.2f} | {s['fed_s']:.2f} |")
    return "\n".join(lines)


def site_table(res: dict[str, dict[str, Any]]) -> str:
    """Per site: the global model's mean accuracy / the personalized models' mean accuracy."""
    head = " | ".join(f"{s} ({', '.join(f'{k} {v:g}' for k, v in (SKEWS[s] or {}).items()) or 'as is'})"
                      for s in SKEWS)
    lines = [f"| setting | {head} |", "|---|" + "---|" * len(SKEWS)]
    for name, r in res.items():
        cells = []
        for s in SKEWS:
            site = r["summary"]["sites"][s]
            glob = site.get("accuracy")
            own = site.get("personal_accuracy", glob)
            cells.append(" / ".join("—" if v is None else f"{v:.3f}" for v in (glob, own)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    from common import save_result  # bench/ is the script's own folder

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2, help="local epochs a round (Ditto's personal epochs stay 1)")
    ap.add_argument("--seeds", type=int, default=3, help="job seeds 0 .. N-1 per setting")
    ap.add_argument("--only", default=None, help=f"comma-separated settings (default {','.join(SETTINGS)})")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else SETTINGS
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; known: {SETTINGS}")
    res: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            runs = [run_one(Path(d), name, args.rounds, args.epochs, seed) for seed in range(args.seeds)]
            res[name] = {"personal": personal_block(name), "summary": summarise(runs), "runs": runs}
    save_result("personal", {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "epochs": args.epochs,
                             "dataset": "digits", "model": "cnn norm=batch", "skews": SKEWS,
                             "clients_per_site": CLIENTS_PER_SITE, "holdout": 0.2,
                             "seconds": round(time.perf_counter() - t0, 1), "runs": res})
    print(table(res))
    print()
    print("Per site, mean accuracy of its clients at the last round (mean over seeds): global model / "
          "personalized model")
    print()
    print(site_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
