"""What the benchmark scripts share: where a result goes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save_result(name: str, out: Any) -> None:
    """Print a benchmark's result and write it to bench/results/<name>.json."""
    text = json.dumps(out, indent=1)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")


def flower_offline() -> None:
    """Flower's and Ray's settings for an offline run (no telemetry, no usage stats, no warning
    about accelerators on a CPU run); read when they are first imported, so call this before."""
    for k in ("FLWR_TELEMETRY_ENABLED", "RAY_USAGE_STATS_ENABLED", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"):
        os.environ.setdefault(k, "0")


def simulate(server: Any, client: Any, nodes: int) -> None:
    """Flower's simulation (Ray) of `client` on `nodes` nodes under `server`, one CPU a node, as the
    benchmarks compare with; Ray's logs quiet, its socket folder short (paths must stay < 108 bytes)."""
    import logging

    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": False,
                             "_temp_dir": tempfile.mkdtemp(prefix="flwr-ray-"), "logging_level": logging.ERROR}}
    run_simulation(server_app=server, client_app=client, num_supernodes=nodes, backend_name="ray",
                   backend_config=backend)
