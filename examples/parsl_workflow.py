"""fedgrid inside a Parsl workflow: per-site preprocessing apps, federated training, an evaluation app.

    python examples/parsl_workflow.py [OUT_DIR]

One Parsl program. It loads a DataFlowKernel with two HighThroughputExecutors on this machine,
``hpc-a`` and ``cloud-b``, as a workflow that has sites of its own would. Each site's preprocessing
app writes its five clients' shards of the digits data (one Parquet file per client). Once both
apps are done, ``fedgrid.submit`` trains the quickstart's model over the two executors. The job's
sites name them with ``executor: {kind: parsl, label: ...}``, and its data are the shards the apps
wrote. An evaluation app then takes the run's future as its argument, so it starts when training
has finished, and scores the exported global model on the held-out digits at a site. fedgrid
neither starts nor stops the workflow's executors: after the run they take the workflow's next
app, and the program's own ``cleanup()`` shuts them down at the end.

Everything stays on this machine and under OUT_DIR (default ``runs/parsl_workflow``): ``shards/``,
the run directory ``run/``, and Parsl's ``runinfo/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import parsl
import yaml
from parsl.app.app import python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

import fedgrid

SITES = {"hpc-a": [0, 1, 2, 3, 4], "cloud-b": [5, 6, 7, 8, 9]}  # each site's clients
QUICKSTART = Path(__file__).with_name("quickstart.yaml")
SEED = 0
# the raw data the sites cut their shards from (fedgrid's built-in digits, split as the quickstart does)
DIGITS = {"dataset": "digits", "clients": 10, "partition": {"kind": "dirichlet", "alpha": 0.5}}


def local_pool(label: str) -> HighThroughputExecutor:
    """One worker on this machine. It and its interchange start with this interpreter, so the
    example also runs from a virtualenv that is not activated (with one activated, Parsl's own
    ``process_worker_pool.py`` and ``interchange.py`` on PATH do the same)."""
    from fedgrid.executors.htex import interchange_cmd, launch_cmd

    return HighThroughputExecutor(label=label, address="127.0.0.1", max_workers_per_node=1,
                                  launch_cmd=launch_cmd(), interchange_launch_cmd=interchange_cmd(),
                                  provider=LocalProvider(init_blocks=1, max_blocks=1))


def workflow_config(out: Path) -> Config:
    return Config(executors=[local_pool(label) for label in SITES], run_dir=str(out / "runinfo"))


# The apps below run in the workflow's workers: everything they use is imported inside them or
# given as an argument (a script's globals do not travel with its functions).


def write_shards(raw: dict[str, Any], clients: list[int], seed: int, out: str) -> list[str]:
    """A site's preprocessing: its clients' rows, one Parquet file each (with the input shape and
    class count in the file's metadata, so the driver never reads a training row)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from fedgrid.apps.datasets import client_arrays
    from fedgrid.apps.shards import arrays_table
    from fedgrid.flow.config.schema import DataSpec

    data = DataSpec.model_validate(raw).model_dump()
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = []
    for c in clients:
        path = Path(out) / f"client-{c:03d}.parquet"
        pq.write_table(arrays_table(client_arrays(data, c, data["clients"], seed)), path)
        paths.append(str(path))
    return paths


def evaluate(result: Any, raw: dict[str, Any], seed: int) -> float:
    """The trained global model's accuracy on the held-out digits, computed at a site from the
    model that fedgrid exports from the run directory (`result`: the run's RunResult)."""
    from safetensors.torch import load_file

    import fedgrid
    from fedgrid.apps import datasets
    from fedgrid.apps.evaluate import evaluate as score
    from fedgrid.apps.models import build, get_params
    from fedgrid.flow.config.schema import DataSpec

    model = build("cnn", (1, 8, 8), 10)
    model.load_state_dict(load_file(fedgrid.export(result.run_dir, fmt="safetensors")))
    test = datasets.load_test(DataSpec.model_validate(raw).model_dump(), seed)
    return float(score(model, get_params(model), test)["accuracy"])


def where() -> str:
    """Which process of the workflow ran this app."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def federated_job(out: Path, rounds: int = 5) -> dict[str, Any]:
    """The quickstart job on the workflow's executors and the shards its apps write."""
    job = yaml.safe_load(QUICKSTART.read_text())
    job.update(name="parsl-workflow", rounds=rounds, checkpoint={"dir": str(out / "run")},
               data={"dataset": "parquet", "clients": DIGITS["clients"],
                     "path": str(out / "shards" / "client-{client:03d}.parquet")},
               sites=[{"name": label, "executor": {"kind": "parsl", "label": label}, "clients": len(clients)}
                      for label, clients in SITES.items()])
    job["round"]["task_retries"] = 0  # the workflow's Config retries its tasks (none here)
    return job


def pipeline(out: Path, rounds: int = 5) -> tuple[Any, float]:
    """Preprocessing at each site, then training, then evaluation, in the loaded workflow."""
    shards = [python_app(write_shards, executors=[label])(DIGITS, clients, SEED, str(out / "shards"))
              for label, clients in SITES.items()]
    trained = fedgrid.submit(federated_job(out, rounds), after=shards, quiet=True)
    accuracy = python_app(evaluate, executors=["hpc-a"])(trained, DIGITS, SEED)
    return trained.result(), accuracy.result()


def main(out: str = "runs/parsl_workflow") -> None:
    dfk = parsl.load(workflow_config(Path(out)))
    try:
        result, accuracy = pipeline(Path(out).resolve())
        print(f"trained {result.rounds_done} rounds on {', '.join(SITES)}; the evaluation app scores the "
              f"exported model {accuracy:.4f} on the held-out digits")
        # the workflow's executors are still up: fedgrid neither added to nor shut down any of them
        hosts = [python_app(where, executors=[label])().result() for label in SITES]
        print(f"after training, the workflow's executors still take its apps: {', '.join(hosts)}")
    finally:
        dfk.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:2])
