"""The Parsl side of a run: one DataFlowKernel, one executor per site, one train app per site.

A client's train app is bound to its site's executor label, so its task can only run there. The
DFK is created directly (not `parsl.load`) so a Python pipeline can hold several runs, and it is
configured for the fastest first round measured on this kind of machine: no scaling strategy
(blocks start at once), no app cache (Parsl memoization cannot hash numpy arrays), no Parsl-level
retries (a failed client is a recorded failure; the round decides what to do about it).

Inside a Parsl workflow (``fedgrid.submit``, ``fedgrid.run(job, dfk=...)``) the run uses the
workflow's DataFlowKernel instead (:func:`join`): a `parsl` site with a `label` runs on that
executor of the workflow, and every other site's executor is built as for a run of its own and
added to the DFK, unless an earlier run there added it already. The workflow owns the DFK and
every executor in it: the run never cleans it up, records no processes of it for a reaper, and
the DFK's own Config (retries, scaling strategy, monitoring) applies to the run's tasks.
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
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fedgrid.apps import blackbox, guard, outputs
from fedgrid.apps.records import SecaggStep
from fedgrid.apps.task import TrainTask
from fedgrid.apps.wire import Packed
from fedgrid.executors import build_executor, parsl_api, site_workers
from fedgrid.executors.common import SpecError
from fedgrid.executors.parsl import Spec as ParslSpec
from fedgrid.executors.parsl import borrowed, borrowed_executor
from fedgrid.flow.config import ConfigError, Job
from fedgrid.flow.config.checks import site_error
from fedgrid.flow.persist.checkpoint import atomic_write
from fedgrid.flow.persist.runlock import end, forget_processes, marked, record_processes
from fedgrid.flow.rounds.blocks import BlockWatch
from fedgrid.flow.rounds.gather import SITE_DOWN

log = logging.getLogger("fedgrid")

# executors a run added to a workflow's DataFlowKernel, with the site options they were built from:
# a later run of a site with the same name and options uses it again
_ADDED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

TRANSIENT = frozenset({"WorkerLost", "ManagerLost", "ConnectionError", "TimeoutError", "ConnectionResetError",
                       "CommandClientTimeoutError", "BrokenPipeError"})


def retry_cost(exc: BaseException, task_record: Any) -> float:
    """Parsl retries a task only for causes that a second try can fix: a lost worker or manager, a
    dropped connection, a timeout. A deterministic error (bad data, a shape mismatch, an injected
    fault) is final at once; re-running it would only burn the round's deadline."""
    names = {t.__name__ for t in type(exc).__mro__}
    if not names & TRANSIENT:
        return float("inf")
    for arg in (task_record or {}).get("args") or ():  # the retry may find its dead worker's black box
        _relaunched(getattr(arg, "obj", arg))
    return 1.0


def _relaunched(arg: Any) -> None:
    """Mark a task (or a cohort's tasks) as run again after its worker was lost: only then does its
    site look for a dead worker's black box naming it (apps/guard.py)."""
    for task in arg if isinstance(arg, list) else [arg]:
        if isinstance(task, TrainTask):
            task.relaunched = True


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
    """A watch on a batch site's blocks (its Spec names a scheduler that can be asked), else None."""
    scheduler = site.executor.scheduler()
    if scheduler is None:
        return None
    return BlockWatch(site.name, executor, scheduler.name, scheduler.query, site.executor.status_poll_s,
                      job.round.deadline_s)


def warm_slots(site: Any) -> int:
    """Workers to warm before round 1: every worker of a site whose blocks all start at once;
    none on sites that scale (their blocks may still be queued, and a warm task must not be what
    asks the scheduler for nodes)."""
    if site.executor.scales:
        return 0
    return site_workers(site.executor)


def own_dfk(job: Job, run_dir: Path, executors: list[Any]) -> tuple[Any, Callable[[], None]]:
    """A DataFlowKernel of the run's own over `executors` (see the module docstring), its sites'
    interchanges started together, and what to call once it is cleaned up (parsl_api)."""
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel

    # Sites on this machine start their blocks at once and never scale ("none": fastest first
    # round). Batch and cloud sites start blocks on demand, so they need Parsl's scaling strategy.
    scaled = any(s.executor.scales for s in job.sites)
    config = Config(executors=[], strategy="simple" if scaled else "none",
                    strategy_period=1.0 if scaled else 0.2, retries=job.round.task_retries,
                    retry_handler=retry_cost, monitoring=monitoring_hub(job, run_dir),
                    run_dir=str(run_dir / "parsl"), usage_tracking=0, initialize_logging=parsl_logging())
    dfk = DataFlowKernel(config)
    try:
        return dfk, parsl_api.add_executors_at_once(dfk, executors)
    except BaseException:
        dfk.cleanup()  # the sites that did start: shut down, not left running
        raise


def build_site(job: Job, i: int, run_dir: Path) -> Any:
    """The executor of `job.sites[i]`, built as its kind says; a kind's SpecError (a `parsl`
    factory that fails now, a workflow's label outside its workflow) names the job key."""
    try:
        return build_executor(job.sites[i], run_dir)
    except SpecError as e:
        raise site_error("<job>", i, e) from None


def join(dfk: Any, job: Job, run_dir: Path) -> list[Any]:
    """The sites' executors in a workflow's DataFlowKernel, in site order: a `label` site's is the
    workflow's own; every other site's is built and added to the DFK, or found there when an
    earlier run added it for a site of the same name and options. Parsl cannot take an executor
    out of a DFK, so what is added stays the workflow's: its cleanup shuts it down."""
    found: list[Any] = []
    new: list[Any] = []
    for i, s in enumerate(job.sites):
        if isinstance(s.executor, ParslSpec) and (label := borrowed(s)) is not None:  # (only a parsl site borrows)
            try:
                ex = borrowed_executor(dfk, label)
            except SpecError as e:
                raise site_error("<job>", i, e) from None
            s.executor.bind(ex)
        elif (ex := dfk.executors.get(s.name)) is not None:
            if _ADDED.get(ex) != s.executor.model_dump_json():
                raise ConfigError("<job>", f"sites.{i}.name", "the workflow's DataFlowKernel already has an "
                                  f"executor labelled {s.name!r}; expected executor: {{kind: parsl, label: {s.name}}} "
                                  "to run the site on it, or another site name")
        else:
            ex = build_site(job, i, run_dir)
            _ADDED[ex] = s.executor.model_dump_json()
            new.append(ex)
        found.append(ex)
    dfk.add_executors(new)
    return found


def embedding_warnings(job: Job, dfk: Any) -> list[str]:
    """What a workflow's DataFlowKernel does differently from a run's own, where the job asks for
    more: Parsl's retries, scaling strategy and monitoring are the DFK's Config, for every app in it."""
    cfg = dfk.config
    out = []
    if job.round.task_retries and cfg.retries < job.round.task_retries:
        out.append(f"round.task_retries={job.round.task_retries} does not apply: the workflow's DataFlowKernel "
                   f"retries a task {cfg.retries} time(s) (its Config's retries)")
    if any(s.executor.scales for s in job.sites) and cfg.strategy in (None, "none"):
        out.append("sites whose blocks start on demand get none: the workflow's DataFlowKernel runs no scaling "
                   "strategy (its Config's strategy='none')")
    if job.monitoring and cfg.monitoring is None:
        out.append("monitoring: true does not apply: the workflow's DataFlowKernel has no MonitoringHub")
    return out


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

    def __init__(self, job: Job, run_dir: Path, dfk: Any = None):
        """`dfk`: a workflow's DataFlowKernel to run in (see the module docstring); None: one of the
        run's own, shut down by `close`."""
        from parsl.executors import HighThroughputExecutor

        self.job = job
        self.run_dir = run_dir
        self.nonce = secrets.token_hex(12)  # marks this run's site processes and names its scratch (apps/guard.py)
        guard.IN_DRIVER = True  # a `local` site's clients run in this process's threads
        self.owns_dfk = dfk is None
        t0 = time.perf_counter()
        if dfk is None:
            executors = [build_site(job, i, run_dir) for i in range(len(job.sites))]
            self.dfk, self._release = own_dfk(job, run_dir, executors)
        else:
            executors = join(dfk, job, run_dir)
            self.dfk = dfk
            for w in embedding_warnings(job, dfk):
                log.warning("%s", w)
        self.start_s = time.perf_counter() - t0
        self.executors = executors
        self.by_site = dict(zip([s.name for s in job.sites], executors, strict=True))
        # HTEX kinds serialize every argument with dill, in pure Python: those get theirs C-pickled
        self._packed = {name for name, ex in self.by_site.items() if isinstance(ex, HighThroughputExecutor)}
        self._seen_workers: set[str] = set()  # sites that have had workers (so none now means lost)
        self._taken_down: set[str] = set()
        self.watches = {s.name: bw for s in job.sites if (bw := block_watch(s, self.by_site[s.name], job)) is not None}
        self.record()  # interchanges now; blocks once they are up (see warm_up)
        self._train, self._warm, self._evaluate, self._step, self._aggregate, self._cohort = map(
            self._apps, self._site_functions())

    @staticmethod
    def _site_functions() -> tuple[Callable[..., Any], ...]:
        from fedgrid.apps.cohort import train_cohort
        from fedgrid.apps.secagg import step as secagg_step
        from fedgrid.apps.siteagg import aggregate_site
        from fedgrid.apps.train import evaluate_client, train_client, warm

        return train_client, warm, evaluate_client, secagg_step, aggregate_site, train_cohort

    def _apps(self, fn: Callable[..., Any]) -> dict[str, Any]:
        """`fn` as a Parsl app of each site, bound to the site's executor label: it runs only there."""
        from parsl.app.app import python_app

        return {site: python_app(fn, executors=[ex.label], data_flow_kernel=self.dfk)
                for site, ex in self.by_site.items()}

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
        """Note this run's processes (blocks exist once a worker has answered) for a later reaper;
        a workflow's are its own (a later run in the same program must not end them)."""
        if self.owns_dfk:
            record_processes(self.run_dir, self.executors, self.nonce)

    def _arg(self, site: str, obj: Any) -> Any:
        """An app argument as it should travel to `site`: C-pickled where the site's executor
        serializes it (apps/wire.py), as it is where the app runs in the driver's threads."""
        return Packed(obj) if site in self._packed else obj

    def submit(self, site: str, task: TrainTask) -> Future:
        return self._train[site](self._arg(site, task))

    def cohort(self, site: str, tasks: list[TrainTask], until: float | None) -> Future:
        """Several clients of `site` trained in one task, one after another (apps/cohort.py); the
        future's value is each client's update or exception, in order."""
        return self._cohort[site](self._arg(site, tasks), until)

    def evaluate(self, site: str, task: TrainTask) -> Future:
        """A federated evaluation task: the client evaluates the task's params on its held-out data."""
        return self._evaluate[site](self._arg(site, task))

    def aggregate(self, site: str, task: Any, settled: Future) -> Future:
        """The site's aggregation app (round.aggregate: site), started by Parsl once `settled` resolves."""
        return self._aggregate[site](self._arg(site, task), settled)

    def call(self, site: str, task: SecaggStep) -> Future:
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
        if self.owns_dfk:
            self._shut_down()
        # what client code started and a worker that died (or was ended at a limit) left behind
        if n := end(marked(self.nonce)):
            log.warning("ended %d process(es) that client code had left running", n)
        shutil.rmtree(blackbox.scratch_path(self.nonce), ignore_errors=True)

    def _shut_down(self) -> None:
        try:
            self.dfk.cleanup()
        except Exception as e:  # noqa: BLE001 - shutdown must never mask the run's own outcome
            log.warning("executor shutdown: %s", e)
        else:
            forget_processes(self.run_dir)
        finally:
            self._release()
