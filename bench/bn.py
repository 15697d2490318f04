"""BatchNorm statistics under the server optimisers: FedAvg, FedAdam, FedYogi, FedAdagrad and
FedAvgM with their defaults on a model with BatchNorm.

    python bench/bn.py [--rounds 20] [--alpha 0.5] [--only fedavg,fedadam,...]

The quickstart as shipped (digits, 10 clients, Dirichlet alpha 0.5, 5 local epochs of momentum-0.9
SGD, 20 rounds) with ``model: {name: cnn, kwargs: {norm: batch}}`` and only ``strategy.name``
changed, on one thread site. Reported per strategy: the test accuracy at the last round and its
gap to FedAvg's, the best round, and the smallest ``running_var`` of the final model: the symptom
that was seen when the server step moved the statistics (1.0 to 0.17 in five rounds under
FedAdam), which apps/kinds.py now keeps out of every server step.

Results go to bench/results/bn.json; the Markdown table for BENCHMARKS.md is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ["fedavg", "fedadam", "fedyogi", "fedadagrad", "fedavgm"]


def run_one(work: Path, name: str, rounds: int, alpha: float) -> dict:
    """One run of the quickstart with BatchNorm under strategy `name` (its defaults)."""
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.persist import checkpoint as ckpt
    from fedgrid.flow.rounds.runner import run

    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    raw["data"]["partition"] = {"kind": "dirichlet", "alpha": alpha}
    raw.update(rounds=rounds, model={"name": "cnn", "kwargs": {"norm": "batch"}}, strategy={"name": name},
               checkpoint={"dir": str(work / name)},
               sites=[{"name": "here", "executor": {"kind": "local", "workers": 2}, "clients": raw["data"]["clients"]}])
    t0 = time.perf_counter()
    rows = run(parse_job(raw, REPO / "examples" / "quickstart.yaml"), quiet=True).rows
    params = ckpt.read_round(ckpt.round_path(work / name, rounds)).params
    var = min(float(np.min(a)) for k, a in params.items() if k.endswith("running_var"))
    acc = [float(r["test_accuracy"]) for r in rows]
    print(f"{name}: {acc[-1]:.4f}, min running_var {var:.3f} ({time.perf_counter() - t0:.0f} s)",
          file=sys.stderr, flush=True)
    return {"acc": acc, "min_running_var": var, "seconds": round(time.perf_counter() - t0, 1)}


def table(res: dict[str, dict]) -> str:
    base = res["fedavg"]["acc"][-1] if "fedavg" in res else None
    lines = ["| strategy | final accuracy | vs FedAvg | best (round) | min running_var |", "|---|---|---|---|---|"]
    for name, r in res.items():
        acc = r["acc"]
        best = int(np.argmax(acc))
        gap = f"{(acc[-1] - base) * 100:+.2f} points" if base is not None and name != "fedavg" else "—"
        lines.append(f"| {name} | {acc[-1]:.4f} | {gap} | {acc[best]:.4f} ({best + 1}) | {r['min_running_var']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    from common import save_result  # bench/ is the script's own folder

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha of the split (the quickstart's 0.5)")
    ap.add_argument("--only", default=None, help=f"comma-separated strategies (default {','.join(STRATEGIES)})")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else STRATEGIES
    res: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            res[name] = run_one(Path(d), name, args.rounds, args.alpha)
    save_result("bn", {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "alpha": args.alpha,
                       "model": "cnn norm=batch", "runs": res})
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
