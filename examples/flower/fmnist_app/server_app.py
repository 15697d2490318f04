"""The ServerApp Flower's simulation runs: FedAvg over every node, for `num-server-rounds` rounds.

fedgrid never runs this file: its job file (../job.yaml) holds the same choices (strategy,
rounds, clients per round, lr) and ``client.initial`` names the same initial model."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fmnist_app.task import initial_arrays

app = ServerApp()
# run-config defaults (the Python API's run_simulation passes none); simulate.py may change them
CONFIG = {"num-server-rounds": 3, "num-nodes": 10, "lr": 0.05}
RESULTS: list = []  # the strategy's Result, for simulate.py


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = {**CONFIG, **context.run_config}
    nodes = int(cfg["num-nodes"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=nodes, min_evaluate_nodes=nodes,
                      min_available_nodes=nodes)
    RESULTS.append(strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=int(cfg["num-server-rounds"]),
                                  train_config=ConfigRecord({"lr": float(cfg["lr"])})))
