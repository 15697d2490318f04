"""The Parsl side of a run: one DataFlowKernel, one executor per site, one train app per site.

A client's train app is bound to its site's executor label, so its task can only run there. The
DFK is created directly (not `parsl.load`) so a Python pipeline can hold several runs, and it is
configured as REFERENCE.md measured fastest: no scaling strategy (blocks start at once), no app
cache (Parsl memoization cannot hash numpy arrays), no Parsl-level retries (a failed client is a
recorded failure; the round decides what to do about it).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fedgrid.executors import build_executor
from fedgrid.flow.config import Job
from fedgrid.flow.runlock import record_processes

log = logging.getLogger("fedgrid")

SCALED_KINDS = {"slurm", "pbs", "kubernetes", "aws"}


def warm_slots(site: Any) -> int:
    """Workers to warm before round 1: every local worker; none on batch sites (their blocks may
    still be queued, and a warm task must not be what asks the scheduler for nodes)."""
    if site.executor.kind in SCALED_KINDS:
        return 0
    return getattr(site.executor, "workers", 1)


class SiteRuntime:
    """Started executors for every site of a job, and a `submit` that routes by site."""

    def __init__(self, job: Job, run_dir: Path):
        from parsl.app.app import python_app
        from parsl.config import Config
        from parsl.dataflow.dflow import DataFlowKernel

        from fedgrid.apps.train import train_client, warm

        self.job = job
        self.run_dir = run_dir
        executors = [build_executor(s, run_dir) for s in job.sites]
        # Sites on this machine start their one block at once and never scale ("none": fastest first
        # round). Batch and cloud sites start blocks on demand, so they need Parsl's scaling strategy.
        scaled = [s for s in job.sites if s.executor.kind in SCALED_KINDS]
        config = Config(executors=executors, strategy="simple" if scaled else "none",
                        strategy_period=1.0 if scaled else 0.2, retries=0,
                        run_dir=str(run_dir / "parsl"), usage_tracking=0, initialize_logging=True)
        t0 = time.perf_counter()
        self.dfk = DataFlowKernel(config)
        self.start_s = time.perf_counter() - t0
        self.executors = executors
        record_processes(run_dir, executors)  # interchanges now; blocks once they are up (see warm_up)
        self._train = {s.name: python_app(train_client, executors=[s.name], data_flow_kernel=self.dfk)
                       for s in job.sites}
        self._warm = {s.name: python_app(warm, executors=[s.name], data_flow_kernel=self.dfk) for s in job.sites}

    def warm_up(self, task_for: Any) -> list[Future]:
        """One warm task per worker, so torch, data and model are loaded before round 1 needs them."""
        futs = []
        for s in self.job.sites:
            first = self.job.client_sites().index(s.name)
            futs += [self._warm[s.name](task_for(first)) for _ in range(warm_slots(s))]
        return futs

    def record(self) -> None:
        """Note this run's processes (blocks exist once a worker has answered) for a later reaper."""
        record_processes(self.run_dir, self.executors)

    def submit(self, site: str, task: dict[str, Any]) -> Future:
        return self._train[site](task)

    def close(self) -> None:
        try:
            self.dfk.cleanup()
        except Exception as e:  # noqa: BLE001 - shutdown must never mask the run's own outcome
            log.warning("executor shutdown: %s", e)
