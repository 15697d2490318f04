"""Run the app with Flower's own simulation (Ray), as a Flower user would before fedgrid:

    python examples/flower/simulate.py --rounds 3 --nodes 10

The same ClientApp runs unchanged under fedgrid: ``fedgrid run examples/flower/job.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fmnist_app, here and in Ray's workers
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                         os.environ.get("PYTHONPATH")]))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only: silences a FutureWarning


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    from flwr.simulation import run_simulation
    from fmnist_app import server_app
    from fmnist_app.client_app import app as client_app

    logging.getLogger("flwr").setLevel(logging.WARNING)
    server_app.CONFIG.update({"num-server-rounds": args.rounds, "num-nodes": args.nodes})
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": args.cpus, "include_dashboard": False,
                             "_temp_dir": tempfile.mkdtemp(prefix="flwr-ray-"), "log_to_driver": False}}
    run_simulation(server_app=server_app.app, client_app=client_app, num_supernodes=args.nodes,
                   backend_name="ray", backend_config=backend)
    result = server_app.RESULTS[-1]
    for rnd, metrics in sorted(result.evaluate_metrics_clientapp.items()):
        print(f"round {rnd}: federated accuracy {float(metrics['eval_acc']):.4f}")


if __name__ == "__main__":
    main()
