"""Start-up: seconds until the first round is done, fedgrid against Flower's simulation, in one run.

    python bench/startup.py [--repeat 3]

- **fedgrid**: ``fedgrid run examples/quickstart.yaml --rounds 1 --fresh`` as a whole process, as a
  scheduled firing or a short job pays it (two htex sites, 10 clients, round 1 included), with the
  start-up timeline the run writes into its fedgrid.log (each stage with its seconds).
- **Flower**: Flower's simulation (Ray) of a 10-client numpy app, one round, in a process of its
  own, timed from the process's start to the end of round 1.

The two alternate `--repeat` times (so a drift of the machine hits both); the medians and their
ratio (fedgrid / Flower) are reported. Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import flower_offline, save_result, simulate  # noqa: E402


def flower_side(out: Path) -> None:
    """In its own process: a 10-node numpy app under Flower's simulation, one round of FedAvg."""
    import psutil

    t0 = psutil.Process().create_time()
    flower_offline()
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg

    client, server, marks = ClientApp(), ServerApp(), []

    @client.train()
    def _train(msg, context):  # noqa: ANN001, ANN202 - a Flower handler: one step of least squares
        rng = np.random.default_rng(int(context.node_config["partition-id"]))
        x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.normal(size=64).astype(np.float32)
        w = msg.content["arrays"]["w"].numpy()
        w = (w - 0.1 * x.T @ (x @ w - y) / len(y)).astype(np.float32)
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)}),
                                   "metrics": MetricRecord({"num-examples": len(y)})}), reply_to=msg)

    @server.main()
    def _main(grid, context) -> None:  # noqa: ANN001
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=10, min_available_nodes=10).start(
            grid=grid, initial_arrays=ArrayRecord({"w": Array(np.zeros(8, np.float32))}), num_rounds=1,
            evaluate_fn=lambda rnd, a: marks.append(time.time()))

    simulate(server, client, 10)
    out.write_text(json.dumps({"first_round_s": marks[-1] - t0, "total_s": time.time() - t0}))


def flower(work: Path) -> dict:
    out = work / "flower.json"
    proc = subprocess.run([sys.executable, __file__, "--flower-side", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"Flower's simulation failed: {proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def fedgrid(work: Path) -> dict:
    """The quickstart's one-round run as a whole process, and the timeline it logged."""
    run_dir = work / "quickstart"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fedgrid.flow.commands.cli", "run", str(REPO / "examples" /
                           "quickstart.yaml"), "--rounds", "1", "--fresh", "--quiet", "--set",
                           f"checkpoint.dir={run_dir}"], capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fedgrid run failed: {proc.stderr[-3000:]}")
    line = next((ln for ln in (run_dir / "fedgrid.log").read_text().splitlines() if "start-up timeline" in ln), "")
    return {"whole_process_s": total, "timeline": line.split("INFO ", 1)[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--flower-side", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flower_side:
        flower_side(args.flower_side)
        return 0
    runs: dict[str, list[dict]] = {"fedgrid": [], "flower": []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeat):
            runs["fedgrid"].append(fedgrid(Path(d) / str(i)))
            runs["flower"].append(flower(Path(d)))
    fg = statistics.median(r["whole_process_s"] for r in runs["fedgrid"])
    fl = statistics.median(r["first_round_s"] for r in runs["flower"])
    out = {"date": time.strftime("%Y-%m-%d"), "repeat": args.repeat, "fedgrid_whole_process_s": fg,
           "flower_first_round_s": fl, "ratio": fg / fl, "runs": runs}
    save_result("startup", out)
    print(f"fedgrid quickstart, one round, whole process: {fg:.1f} s (median of {args.repeat}); Flower's simulation "
          f"to its first round: {fl:.1f} s; ratio {fg / fl:.2f}x")
    print(runs["fedgrid"][-1]["timeline"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
