"""`local`: threads in the driver process (Parsl ThreadPoolExecutor).

For tiny models, debugging, and sites that are the driver's own machine. Threads share the GIL, so
torch's own threading does the parallel work; a crashing client takes the driver with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from fedgrid.executors.common import SpecBase


class Spec(SpecBase):
    kind: Literal["local"] = "local"
    """Threads in the driver process (Parsl's ThreadPoolExecutor)."""
    workers: Annotated[int, Field(ge=1)] = 1
    """Threads: clients training at once."""

    in_driver: ClassVar[bool] = True

    def runs_here(self) -> bool:
        return True

    def node_workers(self) -> int | None:
        return self.workers


def build(site: Any, run_dir: Path, dry_run: bool = False):
    from parsl.executors import ThreadPoolExecutor

    return ThreadPoolExecutor(label=site.name, max_threads=site.executor.workers)


def describe(site: Any) -> str:
    return f"threads in the driver x{site.executor.workers}"
