"""`htex`: Parsl HighThroughputExecutor with a LocalProvider on this machine.

Workers are persistent processes, so a site's data, model and torch import are paid once per
worker (see fedgrid.apps.train). Settings are the fastest measured on a 2-core machine: one block started
at once and never scaled (``init_blocks=1``, ``max_blocks=1``) so the first task runs ~2 s after
start, and a short heartbeat so a pool whose driver was SIGKILLed exits by itself within seconds.
Both the interchange and the worker pool are launched with this interpreter (``python -m ...``)
rather than by name from PATH, so a venv's `fedgrid` works without activating the venv.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from fedgrid.executors.common import SpecBase

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"


class Spec(SpecBase):
    kind: Literal["htex"] = "htex"
    workers: Annotated[int, Field(ge=1)] = 1  # worker processes (one client at a time each)
    address: str = "127.0.0.1"  # where the workers reach the interchange

    watch_workers: ClassVar[bool] = True

    def runs_here(self) -> bool:
        return True


def interchange_cmd() -> list[str]:
    """The interchange runs on the driver's machine and dies with the driver, even a SIGKILLed one
    (see fedgrid.executors.ic_guard); started with this interpreter, so no PATH lookup."""
    return [sys.executable, "-m", "fedgrid.executors.ic_guard", str(os.getpid())]


def launch_cmd() -> str:
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    return DEFAULT_LAUNCH_CMD.replace("process_worker_pool.py", f"{sys.executable} -m {POOL_MODULE}", 1)


def build(site: Any, run_dir: Path, dry_run: bool = False):
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    ex = site.executor
    return HighThroughputExecutor(
        label=site.name,
        address=ex.address,
        max_workers_per_node=ex.workers,
        cores_per_worker=1,
        heartbeat_period=2,
        heartbeat_threshold=10,
        poll_period=5,
        encrypted=True,  # CurveZMQ between interchange and pools: pinned, not left to Parsl's default
        launch_cmd=launch_cmd(),
        interchange_launch_cmd=interchange_cmd(),
        # min_blocks=1: when a job mixes in batch sites the DFK runs the "simple" strategy, which
        # must never scale this machine's only block in
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, nodes_per_block=1),
    )


def describe(site: Any) -> str:
    return f"Parsl HighThroughputExecutor, LocalProvider, {site.executor.workers} worker(s)"
