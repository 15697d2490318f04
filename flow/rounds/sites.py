"""The Parsl side of a run: one DataFlowKernel, one executor per site, one train app per site.

A client's train app is bound to its site's executor label, so its task can only run there. The
DFK is created directly (not `parsl.load`) so a Python pipeline can hold several runs, and it is
configured for the fastest first round measured on this kind of machine: no scaling strategy
(blocks start at once), no app cache (Parsl memoization cannot hash numpy arrays), no Parsl-level
retries (a failed client is a recorded failure; the round decides what to do about it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fedgrid.apps import blackbox, guard, outputs
from fedgrid.apps.task import TrainTask
from fedgrid.apps.wire import Packed
from fedgrid.executors import build_executor
from fedgrid.flow.config import ConfigError, Job
from fedgrid.flow.persist.checkpoint import atomic_write
from fedgrid.flow.persist.runlock import end, forget_processes, marked, record_processes
from fedgrid.flow.rounds.blocks import BlockWatch
from fedgrid.flow.rounds.gather import SITE_DOWN

log = logging.getLogger("fedgrid")

TRANSIENT = frozenset({"WorkerLost", "ManagerLost", "ConnectionError", "TimeoutError", "ConnectionResetError",
                       "CommandClientTimeoutError", "BrokenPipeError"})


def retry_cost(exc: BaseException, task_record: Any) -> float:
    """Parsl retries a task only for causes that a second try can fix: a lost worker or manager, a
    dropped connection, a timeout. A deterministic error (bad data, a shape mismatch, an injected
    fault) is final at once; re-running it would only burn the round's deadline."""
    names = {t.__name__ for t in type(exc).__mro__}
    return 1.0 if names & TRANSIENT else float("inf")


def monitoring_hub(job: Job, run_dir: Path) -> Any:
    """Parsl's MonitoringHub when the job asks for it (``monitoring: true``): every task's states,
    tries and resource use go to ``<run_dir>/monitoring.db`` (SQLite; `parsl-visualize` reads it)."""
    if not job.monitoring:
        return None
    try:
        import sqlalchemy  # noqa: F401 - what parsl[monitoring] adds; without it the hub fails late
        from parsl.monitoring import MonitoringHub
    except ImportError:
        raise ConfigError("<job>", "monitoring", "the monitoring extra: pip install 'fedgrid[monitoring]'") from None
    return MonitoringHub(logging_endpoint=f"sqlite:///{run_dir / 'monitoring.db'}",
                         workflow_name=job.name, resource_monitoring_interval=10)


def block_watch(site: Any, executor: Any, job: Job) -> BlockWatch | None:
    """A watch on a batch site's blocks (its kind can ask its scheduler: ``query``), else None."""
    from fedgrid.executors import kind_module

    mod = kind_module(site.executor.kind)
    if not hasattr(mod, "query"):
        return None
    return BlockWatch(site.name, executor, mod.SCHEDULER, mod.query, site.executor.status_poll_s,
                      job.round.deadline_s)


def warm_slots(site: Any) -> int:
    """Workers to warm before round 1: every local worker; none on batch sites (their blocks may
    still be queued, and a warm task must not be what asks the scheduler for nodes)."""
    if site.executor.scales:
        return 0
    return getattr(site.executor, "workers", 1)


def parsl_logging() -> Any:
    """Parsl's own log (run_dir/parsl/.../parsl.log) at INFO, its DataFlowKernel's at WARNING, or
    everything at DEBUG with FEDGRID_PARSL_DEBUG=1.

    At DEBUG Parsl writes about eight lines per task from the driver's submit path: at a thousand
    clients a round that is a millisecond per client (bench/overhead.py). At INFO the
    DataFlowKernel still writes seven per healthy task (state changes, "submitted", "launched",
    "not redirected"): 70,000 records a round at 10,000 clients, each made on the driver's GIL
    whether or not a filter drops it then (~0.2 ms a client). At WARNING it still logs every
    task that fails for good, with its exception; fedgrid records each client's failure and why
    in the rounds table and fedgrid.log. The executors' and the interchange's lines stay at INFO.
    """
    from parsl.logconfigs.file import FileLogging

    debug = bool(os.environ.get("FEDGRID_PARSL_DEBUG"))
    level = logging.DEBUG if debug else logging.INFO
    logging.getLogger("parsl").setLevel(level)  # an earlier DFK in this process may have left DEBUG
    logging.getLogger("parsl.dataflow.dflow").setLevel(logging.NOTSET if debug else logging.WARNING)
    return FileLogging(level=level)


def live_managers(ex: Any, managers: list[dict]) -> list[dict]:
    """The connected managers whose block still runs, where this machine started the blocks (a
    LocalProvider records each launcher's pid, and the launcher exits with its pool): the
    interchange lists a dead pool until it has missed its heartbeats, seconds later on purpose (a
    busy pool may be late with one). Elsewhere, every connected manager."""
    jobs = getattr(getattr(ex, "provider", None), "resources", {})
    pids = {bid: jobs.get(jid, {}).get("remote_pid") for bid, jid in getattr(ex, "blocks_to_job_id", {}).items()}
    if not pids or not all(str(p or "").isdigit() for p in pids.values()):
        return managers
    alive = {str(bid) for bid, pid in pids.items() if outputs.running(int(pid))}
    return [m for m in managers if str(m.get("block_id")) in alive]


class SiteRuntime:
    """Started executors for every site of a job, and a `submit` that routes by site."""

    def __init__(self, job: Job, run_dir: Path):
        from parsl.app.app import python_app
        from parsl.config import Config
        from parsl.dataflow.dflow import DataFlowKernel
        from parsl.executors import HighThroughputExecutor

        from fedgrid.apps.secagg import step as secagg_step
        from fedgrid.apps.siteagg import aggregate_site
        from fedgrid.apps.train import evaluate_client, train_client, warm

        self.job = job
        self.run_dir = run_dir
        self.nonce = secrets.token_hex(12)  # marks this run's site processes and names its scratch (apps/guard.py)
        guard.IN_DRIVER = True  # a `local` site's clients run in this process's threads
        executors = [build_executor(s, run_dir) for s in job.sites]
        # Sites on this machine start their one block at once and never scale ("none": fastest first
        # round). Batch and cloud sites start blocks on demand, so they need Parsl's scaling strategy.
        scaled = [s for s in job.sites if s.executor.scales]
        config = Config(executors=executors, strategy="simple" if scaled else "none",
                        strategy_period=1.0 if scaled else 0.2, retries=job.round.task_retries,
                        retry_handler=retry_cost, monitoring=monitoring_hub(job, run_dir),
                        run_dir=str(run_dir / "parsl"), usage_tracking=0, initialize_logging=parsl_logging())
        t0 = time.perf_counter()
        self.dfk = DataFlowKernel(config)
        self.start_s = time.perf_counter() - t0
        self.executors = executors
        self.by_site = dict(zip([s.name for s in job.sites], executors, strict=True))
        # HTEX kinds serialize every argument with dill, in pure Python: those get theirs C-pickled
        self._packed = {name for name, ex in self.by_site.items() if isinstance(ex, HighThroughputExecutor)}
        self._seen_workers: set[str] = set()  # sites that have had workers (so none now means lost)
        self._taken_down: set[str] = set()
        self.watches = {s.name: w for s in job.sites if (w := block_watch(s, self.by_site[s.name], job)) is not None}
        record_processes(run_dir, executors, self.nonce)  # interchanges now; blocks once they are up (see warm_up)
        self._train = {s.name: python_app(train_client, executors=[s.name], data_flow_kernel=self.dfk)
                       for s in job.sites}
        self._warm = {s.name: python_app(warm, executors=[s.name], data_flow_kernel=self.dfk) for s in job.sites}
        self._evaluate = {s.name: python_app(evaluate_client, executors=[s.name], data_flow_kernel=self.dfk)
                          for s in job.sites}
        self._step = {s.name: python_app(secagg_step, executors=[s.name], data_flow_kernel=self.dfk)
                      for s in job.sites}
        self._aggregate = {s.name: python_app(aggregate_site, executors=[s.name], data_flow_kernel=self.dfk)
                           for s in job.sites}

    def warm_up(self, task_for: Callable[[int], TrainTask]) -> list[tuple[str, Future]]:
        """One warm task per worker, so torch, data and model are loaded before round 1 needs them
        (`task_for(client)`: the warm task of a client of the site, carrying the job's model).
        Each comes with its site's name: a failure to import the client stops the run naming it."""
        futs = []
        for s in self.job.sites:
            first = self.job.client_sites().index(s.name)
            futs += [(s.name, self._warm[s.name](self._arg(s.name, task_for(first)))) for _ in range(warm_slots(s))]
        return futs

    def record(self) -> None:
        """Note this run's processes (blocks exist once a worker has answered) for a later reaper."""
        record_processes(self.run_dir, self.executors, self.nonce)

    def _arg(self, site: str, obj: Any) -> Any:
        """An app argument as it should travel to `site`: C-pickled where the site's executor
        serializes it (apps/wire.py), as it is where the app runs in the driver's threads."""
        return Packed(obj) if site in self._packed else obj

    def submit(self, site: str, task: TrainTask) -> Future:
        return self._train[site](self._arg(site, task))

    def evaluate(self, site: str, task: TrainTask) -> Future:
        """A federated evaluation task: the client evaluates the task's params on its held-out data."""
        return self._evaluate[site](self._arg(site, task))

    def aggregate(self, site: str, task: Any, settled: Future) -> Future:
        """The site's aggregation app (round.aggregate: site), started by Parsl once `settled` resolves."""
        return self._aggregate[site](self._arg(site, task), settled)

    def call(self, site: str, task: dict[str, Any]) -> Future:
        """A secure-aggregation step at a site (apps/secagg.py)."""
        return self._step[site](self._arg(site, task))

    # -- site health ----------------------------------------------------------------------------
    def down_sites(self) -> dict[str, str]:
        """Sites whose clients cannot be served now, with why: on this machine, a site that had
        workers and has none (pool crashed, node gone); a batch site whose block was lost or that
        has waited in its queue longer than a round (flow/rounds/blocks.py).

        Other kinds are not judged: a cloud site with no workers is normal while its block starts,
        and a Globus Compute endpoint's workers are not visible from here.
        A dead local pool stays listed until the interchange misses its heartbeats.
        """
        down = {site: why for site, w in self.watches.items() if (why := w.unavailable())}
        for s in self.job.sites:
            if not s.executor.watch_workers:
                continue
            ex = self.by_site[s.name]
            try:
                n = len(live_managers(ex, ex.connected_managers()))
            except Exception:  # noqa: BLE001 - an interchange that cannot answer is down too
                n = 0
            if n:
                self._seen_workers.add(s.name)
            elif s.name in self._seen_workers:
                down[s.name] = SITE_DOWN
        return down

    def note_blocks(self) -> None:
        """The batch sites' blocks and their timeline, for `fedgrid status` (sites.json)."""
        if self.watches:
            text = json.dumps({s: w.view() for s, w in self.watches.items()}, indent=1)
            atomic_write(self.run_dir / "sites.json", lambda tmp: tmp.write_text(text))

    def take_down(self, site: str) -> None:
        """Drill: kill every worker process of a site at once, as when its node is lost."""
        ex = self.by_site[site]
        for job in list(getattr(ex.provider, "resources", {}).values()):
            pid = job.get("remote_pid")
            with contextlib.suppress(ProcessLookupError, ValueError, TypeError):
                os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
        self._taken_down.add(site)

    def bring_back(self, site: str, wait_s: float = 60.0) -> None:
        """Drill: the lost site's scheduler gives it a new block; the drill's round starts once the
        block's workers have registered (so "back from round r" means usable in round r)."""
        if site not in self._taken_down:
            return
        ex = self.by_site[site]
        new = {str(b) for b in ex.scale_out_facade(1)}
        self._taken_down.discard(site)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the new block's own manager (the lost one may still be listed)
                if any(str(m.get("block_id")) in new for m in ex.connected_managers()):
                    self.record()  # the new block's processes belong to this run too
                    return
            time.sleep(0.2)
        log.warning("fault drill: site %s did not come back within %.0f s", site, wait_s)

    def apply_drills(self, lost: set[str]) -> None:
        for site in lost - self._taken_down:
            log.warning("fault drill: site %s lost (its workers are killed)", site)
            self.take_down(site)
        for site in self._taken_down - lost:
            log.warning("fault drill: site %s comes back (a new block)", site)
            self.bring_back(site)

    def close(self) -> None:
        try:
            self.dfk.cleanup()
        except Exception as e:  # noqa: BLE001 - shutdown must never mask the run's own outcome
            log.warning("executor shutdown: %s", e)
        else:
            forget_processes(self.run_dir)
        # what client code started and a worker that died (or was ended at a limit) left behind
        if n := end(marked(self.nonce)):
            log.warning("ended %d process(es) that client code had left running", n)
        shutil.rmtree(blackbox.scratch_path(self.nonce), ignore_errors=True)
