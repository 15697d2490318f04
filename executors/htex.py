"""`htex`: Parsl HighThroughputExecutor with a LocalProvider on this machine.

Workers are persistent processes, so a site's data, model and torch import are paid once per
worker (see fedgrid.apps.train). Settings are the fastest measured on a 2-core machine: one block started
at once and never scaled (``init_blocks=1``, ``max_blocks=1``) so the first task runs ~2 s after
start, and a short heartbeat so a pool whose driver was SIGKILLed exits by itself within seconds.
Both the interchange and the worker pool are launched with this interpreter (``python -m ...``)
rather than by name from PATH, so a venv's `fedgrid` works without activating the venv.

GPUs (a workstation's): ``gpus`` pins each worker to a GPU (:mod:`fedgrid.executors.gpus`), one
worker per pin unless ``workers`` says otherwise (it must then agree: Parsl would quietly start
fewer). GPU workers are not bound by cores, so they get a share of the machine's cores small
enough that the pool starts every one of them (a pool starts at most cores / cores_per_worker).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, model_validator

from fedgrid.executors import gpus as pinning
from fedgrid.executors.common import SpecBase, SpecError


class Spec(SpecBase, pinning.GpuSharing):
    kind: Literal["htex"] = "htex"
    """Worker processes on this machine (Parsl's HighThroughputExecutor with a LocalProvider, one
    block started at once)."""
    workers: Annotated[int, Field(ge=1)] = 1
    """Worker processes, one client at a time each. With `gpus`: one per pin (leave it out, or give
    the same number)."""
    address: str = "127.0.0.1"
    """Where the workers reach the interchange."""
    gpus: pinning.Gpus = None
    """The GPUs workers are pinned to: a count (`gpus: 2` is devices 0 and 1) or device ids (`[0,
    2]`, or `GPU-...`/`MIG-...` UUIDs). An id listed twice is shared by two workers (`[0, 0, 1]`:
    three workers, two on GPU 0)."""

    watch_workers: ClassVar[bool] = True

    def runs_here(self) -> bool:
        return True

    def node_workers(self) -> int | None:
        return self.workers

    def gpu_ids(self) -> list[str]:
        g = self.gpus
        return [str(i) for i in (range(g) if isinstance(g, int) else g or [])]

    @model_validator(mode="before")
    @classmethod
    def _a_worker_per_pin(cls, v: Any) -> Any:
        """Without ``workers``, a site with GPUs runs one worker per pin (what the count is for is
        known only once the GPU options are valid; invalid ones are reported by their own keys)."""
        if not isinstance(v, dict) or "workers" in v or not v.get("gpus"):
            return v
        try:
            options = {k: v[k] for k in (*pinning.GpuSharing.model_fields, "gpus") if k in v}
            n = len(cls.model_validate({**options, "workers": 1}).pins())
        except (ValidationError, SpecError):
            return v
        return {**v, "workers": n} if n else v

    def gpu_pins(self) -> list[str]:
        """Each worker's GPU(s), checked against ``workers`` (a SpecError names the option)."""
        pins = self.pins()
        if pins and self.workers != len(pins):
            raise SpecError("workers", f"{self.workers} worker(s) for {len(pins)} GPU pin(s) "
                                       f"({pinning.placement(pins)}); leave workers out for one worker per pin, "
                                       "or share GPUs with workers_per_gpu")
        return pins

    def resolve(self, site: str) -> None:
        self.gpu_pins()


def interchange_cmd() -> list[str]:
    """The interchange runs on the driver's machine and dies with the driver, even a SIGKILLed one
    (see fedgrid.executors.ic_guard); started with this interpreter, so no PATH lookup. The guard
    is run from its file, not imported as ``fedgrid.executors.ic_guard``: that would import this
    package and every site kind (pydantic included, about 0.3 s), in series for each site's start,
    and the guard needs none of it. (Not as a script either: its folder would come first on the
    path, and this package's `parsl` kind would shadow Parsl.)"""
    guard = Path(__file__).resolve().with_name("ic_guard.py")
    return [sys.executable, "-c", f"import runpy; runpy.run_path({str(guard)!r}, run_name='__main__')",
            str(os.getpid())]


def launch_cmd() -> str:
    """Parsl's pool command, run by this interpreter through fedgrid.executors.pool_start (workers
    forked from a warm process; run from its file, like the interchange's guard)."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    start = Path(__file__).resolve().with_name("pool_start.py")
    run = f"import runpy; runpy.run_path('{start}', run_name='__main__')"
    return DEFAULT_LAUNCH_CMD.replace("process_worker_pool.py", f'{sys.executable} -c "{run}"', 1)


def cores_per_worker(workers: int, pinned: bool) -> float:
    """One core per CPU worker. A pool starts at most floor(cores / cores_per_worker) workers, and
    GPU workers must all start: they get cores / (workers + 0.5) each when there are more of them
    than cores (the half keeps the floor at `workers` whatever the float rounding)."""
    cores = os.cpu_count() or 1
    return cores / (workers + 0.5) if pinned and workers > cores else 1.0


def build(site: Any, run_dir: Path, dry_run: bool = False):
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    ex = site.executor
    pins = ex.gpu_pins()
    return HighThroughputExecutor(
        label=site.name,
        address=ex.address,
        max_workers_per_node=ex.workers,
        cores_per_worker=cores_per_worker(ex.workers, bool(pins)),
        available_accelerators=pins,
        heartbeat_period=2,
        heartbeat_threshold=10,
        poll_period=5,
        encrypted=True,  # CurveZMQ between interchange and pools: pinned, not left to Parsl's default
        launch_cmd=pinning.export(pins) + launch_cmd(),
        interchange_launch_cmd=interchange_cmd(),
        # min_blocks=1: when a job mixes in batch sites the DFK runs the "simple" strategy, which
        # must never scale this machine's only block in
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, nodes_per_block=1),
    )


def describe(site: Any) -> str:
    ex = site.executor
    pins = ex.pins()
    return (f"Parsl HighThroughputExecutor, LocalProvider, {ex.workers} worker(s)"
            + (f"; {pinning.placement(pins)}" if pins else ""))
