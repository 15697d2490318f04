"""Flower's own simulation of a ClientApp, as the reference fedgrid's Flower runs are compared with:

    python flower_sim.py MODULE CLIENTS ROUNDS LR OUT.npz

runs ``MODULE:app`` on CLIENTS simulated nodes under a ServerApp with Flower's FedAvg (every node
trains every round, no federated evaluation), from ``MODULE:initial()``, with ``lr`` in the train
config, and saves the final global arrays. A process of its own: Ray starts its own process tree.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import tempfile

import numpy as np


def main(module: str, clients: int, rounds: int, lr: float, out: str) -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.app import ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    user = importlib.import_module(module)
    result: dict[str, np.ndarray] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                          min_available_nodes=clients)
        got = strategy.start(grid=grid, initial_arrays=user.initial(), num_rounds=rounds,
                             train_config=ConfigRecord({"lr": lr}))
        result.update({k: a.numpy() for k, a in got.arrays.items()})

    tmp = tempfile.mkdtemp(prefix="flwr-ray-")  # Ray's socket paths must stay under 108 bytes
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               # one Ray worker: the app's model does not depend on how many run it, and a second
               # one's start costs seconds of CPU that the test suite's other processes need
               "init_args": {"num_cpus": 1, "include_dashboard": False, "_temp_dir": tmp,
                             "logging_level": logging.ERROR, "log_to_driver": False}}
    try:
        run_simulation(server_app=server, client_app=user.app, num_supernodes=clients, backend_name="ray",
                       backend_config=backend)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    if not result:
        raise SystemExit("Flower's simulation produced no model")
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
