"""Tests against a real one-node Slurm cluster (munge, slurmctld, slurmd) that
scripts/slurm-cluster.sh installs and starts: fedgrid's `slurm` site kind with its blocks in real
batch jobs, and the drills of a batch site (a cancelled block, a walltime, a held queue, the
driver itself as a batch job). Marked `slurm`; `make test-slurm` runs them (CI does, after
`make test`). They skip, with the script's reason, only where the cluster cannot start (not root,
no apt); with FEDGRID_REQUIRE_SLURM=1 (CI) that is an error instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm() -> str:
    """The cluster's partition, once the cluster answers."""
    out = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        why = f"no Slurm cluster here: {out.stderr.strip()[-300:]}"
        if os.environ.get("FEDGRID_REQUIRE_SLURM"):
            pytest.fail(why)
        pytest.skip(why)
    return "debug"


@pytest.fixture
def partition_down(slurm):
    """Hold the partition (new blocks stay PENDING, reason PartitionDown); `up()` releases it.
    Released whatever happens, so no later test inherits a held queue."""
    def state(s: str) -> None:
        subprocess.run(["scontrol", "update", f"PartitionName={slurm}", f"State={s}"], check=True)

    state("DOWN")
    yield lambda: state("UP")
    state("UP")


@pytest.fixture
def slurm_site(slurm):
    return _slurm_site


def _slurm_site(name: str, clients: int, **over) -> dict:
    """A `slurm` site on the test cluster: one worker per block, blocks that share the node
    (not --exclusive: the driver's own HTEX site runs beside them), the interchange on loopback,
    and fast polling and heartbeats so a drill takes seconds."""
    executor = {"kind": "slurm", "partition": "debug", "launcher": "single", "exclusive": False,
                "address": "127.0.0.1", "walltime": "00:10:00", "workers_per_node": 1,
                "worker_init": f"source {VENV_BIN / 'activate'}", "status_poll_s": 2,
                "heartbeat_period": 2, "heartbeat_threshold": 10, **over}
    return {"name": name, "clients": clients, "executor": executor}

