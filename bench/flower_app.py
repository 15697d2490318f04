"""One Flower app, two runtimes: Flower's own simulation against `fedgrid run`, in one run.

    python bench/flower_app.py [--rounds 3]

The app is examples/flower/fmnist_app (a ClientApp on Flower's Message API: a torch CNN on its
Fashion-MNIST partition, chosen by partition-id), unchanged on both sides:

- **Flower**: ``run_simulation`` (Ray) with the example's ServerApp (FedAvg over every node,
  federated evaluation on every node after each round), one CPU per node, in a process of its own;
- **fedgrid**: ``fedgrid run examples/flower/job.yaml`` (two htex sites of one worker each, the
  same rounds, nodes, lr and run config, ``round.federated_every: 1``), in a process of its own.

Both are timed from their process's start: seconds until round 1's training is aggregated, seconds
per round from one round's end to the next (the federated evaluation in between included), total
seconds, and the federated accuracy (example-weighted ``eval_acc``) after each round. Writes
bench/results/flower_app.json and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "flower"
sys.path.insert(0, str(REPO / "bench"))

from common import flower_offline, save_result, simulate  # noqa: E402
from run import bench_job  # noqa: E402


def flower_side(rounds: int, nodes: int, out: Path) -> None:
    """In its own process (``--flower-side``): the example under Flower's simulation, timed."""
    import psutil

    t0 = psutil.Process().create_time()
    sys.path.insert(0, str(EXAMPLE))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))
    flower_offline()
    from flwr.app import ConfigRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from fmnist_app.client_app import app as client_app
    from fmnist_app.server_app import CONFIG
    from fmnist_app.task import initial_arrays

    marks: list[float] = []  # evaluate_fn runs once before round 1 and after each round's aggregation
    results: list = []
    server = ServerApp()

    @server.main()
    def _main(grid, context) -> None:  # noqa: ANN001 - as the example's ServerApp, plus the clock
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=nodes, min_evaluate_nodes=nodes,
                          min_available_nodes=nodes)
        results.append(strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=rounds,
                                      train_config=ConfigRecord({"lr": float(CONFIG["lr"])}),
                                      evaluate_fn=lambda rnd, arrays: marks.append(time.time())))

    simulate(server, client_app, nodes)
    ends = marks[1:]
    acc = [float(results[0].evaluate_metrics_clientapp[r]["eval_acc"]) for r in range(1, rounds + 1)]
    out.write_text(json.dumps({"first_trained_s": ends[0] - t0, "total_s": time.time() - t0,
                               "end_to_end_s": [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)],
                               "accuracy": acc}))


def run_flower(rounds: int, nodes: int, work: Path) -> dict:
    out = work / "flower.json"
    proc = subprocess.run([sys.executable, __file__, "--flower-side", "--rounds", str(rounds), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"Flower's simulation failed: {proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def table(res: dict) -> str:
    rows = ["| runtime | to round 1 (s) | s/round | total (s) | federated accuracy by round |", "|---|---|---|---|---|"]
    for name in ("flower", "fedgrid"):
        r = res[name]
        rows.append(f"| {name} | {r['first_trained_s']:.1f} | {statistics.median(r['end_to_end_s']):.2f} | "
                    f"{r['total_s']:.1f} | {' '.join(f'{a:.4f}' for a in r['accuracy'])} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flower-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import yaml

    nodes = int(yaml.safe_load((EXAMPLE / "job.yaml").read_text())["data"]["clients"])  # the same on both sides
    if args.flower_side:
        return flower_side(args.rounds, nodes, args.out)
    with tempfile.TemporaryDirectory() as d:
        flower = run_flower(args.rounds, nodes, Path(d))
        fedgrid = bench_job(EXAMPLE / "job.yaml", args.rounds, Path(d), tag="flower-fmnist", accuracy="fed_acc")
    res = {"rounds": args.rounds, "nodes": nodes, "flower": flower, "fedgrid": fedgrid}
    save_result("flower_app", res)
    print(table(res))


if __name__ == "__main__":
    main()
