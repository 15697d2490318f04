"""`run(job)`: what both the CLI and Python pipeline scripts call, as named stages.

1. **prepare** the run directory: one driver at a time (the lock), orphans of a dead driver
   reaped, ``--fresh`` archiving, the newest valid checkpoint found and the rounds table reconciled
   with it (flow/rounds/prepare.py);
2. **start sites**: one Parsl DataFlowKernel with an executor per site (flow/rounds/sites.py);
3. **build the model and the store** while the workers start: the central test set, the model the
   sites build (so the warm-up tasks carry it), how params travel;
4. **restore** the strategy, profiles, memory and RNG from the checkpoint (or write round 0);
5. **loop**: synchronous rounds (flow/rounds/synchronous.py) or FedBuff's server steps
   (flow/rounds/asynchronous.py), each finished round handed to the background writer;
6. **summarise**: drain the writer, one line on how the run went.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedgrid.apps import codec
from fedgrid.flow.clients import personal
from fedgrid.flow.config import ConfigError, Job
from fedgrid.flow.persist.runlock import RunLock
from fedgrid.flow.persist.table import rows_path
from fedgrid.flow.privacy.dp import Privacy
from fedgrid.flow.privacy.secagg import SecureAggregation
from fedgrid.flow.rounds import asynchronous, synchronous
from fedgrid.flow.rounds.driver import Driver
from fedgrid.flow.rounds.gather import when_done
from fedgrid.flow.rounds.outcome import ResumeRefused, RoundFailed, RunResult
from fedgrid.flow.rounds.prepare import ModelParts, Start, build_model, open_store, prepare, restore_params
from fedgrid.flow.rounds.progress import RunProgress, setup_log
from fedgrid.flow.rounds.tasks import Tasks
from fedgrid.flow.rounds.timeline import Timeline
from fedgrid.flow.rounds.writer import RoundWriter
from fedgrid.flow.strategies import make_strategy
from fedgrid.flow.tracking import open_tracking

if TYPE_CHECKING:
    from fedgrid.flow.config.schema import ClientSpec

__all__ = ["ResumeRefused", "RoundFailed", "RunResult", "run"]

log = logging.getLogger("fedgrid")


def run(job: Job, base: Path | None = None, fresh: bool = False, quiet: bool = False, stream=None,
        more: int | None = None, stop: threading.Event | None = None, log_format: str = "text",
        dfk: Any = None) -> RunResult:
    """Run (or resume) `job` to `job.rounds` rounds; returns the rounds table rows.

    `more`: train that many rounds past the newest checkpoint instead (``fedgrid run --rounds +N``);
    the target is read under the run directory's lock, so two invocations never count the same
    rounds. `stop`: once set, the run finishes the round in progress, checkpoints it and returns
    (`stopped` is then true). `log_format`: ``text`` or ``json`` (one object a line) for the run
    directory's fedgrid.log. `dfk`: a Parsl workflow's DataFlowKernel to run in instead of one of
    the run's own (flow/rounds/sites.py); it is left running.
    """
    run_dir = job.run_dir(base or Path.cwd()).resolve()
    lock = RunLock(run_dir, share_group=job.checkpoint.share_group)
    lock.acquire()
    handler: logging.Handler | None = None
    try:
        handler = setup_log(run_dir, log_format)
        progress = RunProgress(job.rounds, 0, quiet=quiet, stream=stream, show=job.round.show)
        return _run_locked(job, run_dir, fresh, progress, more, stop, dfk)
    except Exception:
        log.exception("run stopped")
        raise
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        lock.release()


def _run_locked(job: Job, run_dir: Path, fresh: bool, progress: RunProgress, more: int | None,
                stop: threading.Event | None, dfk: Any = None) -> RunResult:
    """The stages, with the lock held and the log open (run() releases both whatever happens)."""
    # torch's import (~1.5 s) overlaps with the executors starting up; the driver needs it later
    threading.Thread(target=importlib.import_module, args=("torch",), daemon=True).start()
    t_start = time.time()
    marks = Timeline()
    with contextlib.ExitStack() as cleanup:  # unwinds in reverse: writer, sites, progress
        cleanup.callback(progress.close)
        start = prepare(job, run_dir, fresh, more, progress)
        marks.mark("run directory ready")
        job = start.job
        if start.complete:
            progress.summary(f"{job.name}: already complete ({start.done} rounds) in {run_dir}")
            return RunResult(run_dir, start.done, start.done, start.table.last)
        # opened now, so MLflow's import and database set-up overlap the sites' start; closed last,
        # after the writer's final round
        tracking = open_tracking(job, run_dir)
        if tracking is not None and job.tracking is not None:  # (a tracking object only with a tracking block)
            cleanup.callback(tracking.close, lambda: _artifacts(run_dir), job.tracking.drain_s)
        runtime = _start_sites(job, run_dir, progress, dfk)
        marks.mark("sites started")
        cleanup.callback(runtime.close)
        drv, *held = _build_driver(job, run_dir, progress, runtime, start, stop, marks)
        marks.mark("round 1 begins" if start.done == 0 else f"round {start.done + 1} begins")
        log.info("%s", marks.text())
        if tracking is not None:
            drv.writer.after = tracking.round
        cleanup.callback(drv.writer.close)
        why = _loop(drv, start.done, held)
        drv.writer.drain()
        return _summarise(drv, start, t_start, why)


def _artifacts(run_dir: Path) -> list[Path]:
    """What a tracker keeps of a finished run: the report's plots and the exported model."""
    from fedgrid.flow.results.export import export_model
    from fedgrid.flow.results.report import write_report

    model = export_model(run_dir)
    return [p for p in write_report(run_dir) if p.suffix == ".png"] + [model, model.with_suffix(".json")]


def _start_sites(job: Job, run_dir: Path, progress: RunProgress, dfk: Any = None):  # noqa: ANN202 - a SiteRuntime
    from fedgrid.flow.persist import dataplane
    from fedgrid.flow.rounds.sites import SiteRuntime

    if job.store.url:  # an unusable store fails now, before any batch job is queued
        dataplane.check_store(dataplane.store_url(job.store.url))
    from fedgrid.flow.config.checks import strategy_advice

    for key, why in strategy_advice(job):
        progress.say(f"warning: {key}: {why}")
    progress.say(f"{job.name}: starting {len(job.sites)} site(s): "
                 + ", ".join(f"{s.name} ({s.executor.kind}, {s.clients} clients)" for s in job.sites))
    return SiteRuntime(job, run_dir, dfk)


def _build_driver(job: Job, run_dir: Path, progress: RunProgress, runtime, start: Start,  # noqa: ANN001
                  stop: threading.Event | None, marks: Timeline) -> tuple[Driver, dict]:
    """Stages 3 and 4: everything the rounds need, built while the workers start, then restored."""
    python_path = job.client.python_path if job.client is not None else []
    if python_path:  # (the check that parsed the job did this already, unless the Job was built without one)
        from fedgrid.apps.train import use_python_path

        use_python_path(python_path)
    parts: ModelParts = build_model(job)
    marks.mark("model built")
    if python_path:  # each worker puts it first on its own sys.path before it imports the class
        parts.code["python_path"] = list(python_path)
    needed = bool(job.client_state()) or job.round.aggregate == "site"
    transfer, store = open_store(job, run_dir, parts.params, progress, needed=needed,
                                 first=start.state is None)
    privacy = Privacy(job, run_dir, start.state.row if start.state else None) if job.privacy is not None else None
    tasks = Tasks(job, run_dir, parts.code, transfer, store, privacy, parts.kinds or None, runtime.nonce)
    tasks.keeping(personal.keep_options(job, job.client is not None and job.client.stateful,
                                        personal.names(job, parts.params, parts.model)))
    warm = runtime.warm_up(tasks.warm)  # the model spec is known: the workers build the model now
    for site in {s for s, _ in warm}:
        when_done([f for s, f in warm if s == site], functools.partial(marks.mark, f"site {site} warm"))
    strategy = make_strategy(job.strategy)
    strategy.bind(job.data.clients, store.url if store is not None else None)
    strategy.kinds = parts.kinds or None  # statistics buffers are never a gradient (apps/kinds.py)
    writer = RoundWriter(run_dir, job.rounds, job.round.eval_every, job.checkpoint.keep, start.table, progress,
                         parts.evaluator(), store, sweep_lag(job, strategy))
    secagg = SecureAggregation(job, runtime, run_dir) if job.secagg is not None else None
    drv = Driver(job, run_dir, progress, runtime, strategy, tasks, writer, privacy, secagg, stop)
    if start.state is None:
        writer.first(drv.snapshot(0, parts.params, {"round": 0}))
        params = parts.params
    else:
        params = restore_params(parts, start.state, run_dir)
        drv.restore(start.state)
    drv.aim(start.done)
    try:
        _await_warm_up(warm, job.round.deadline_s, progress, job.client)
    except ConfigError:
        writer.close()
        raise
    runtime.record()
    return drv, params


def _await_warm_up(warm: list[tuple[str, Future]], timeout_s: float, progress: RunProgress,
                   client: ClientSpec | None = None) -> None:
    """Wait for the warm-up, at most a round's deadline: a site that cannot answer (an endpoint
    offline, a block stuck in a queue) must not hold the driver before round 1. Round 1 then
    meets the site like any other and records what happens to its clients.

    A failed warm-up is a warning, except when a site's workers cannot import the job's client
    module (`warm` is each site's name and warm task): every task there would fail the same way,
    and round 1 would only spend its attempts and deadline finding that out. That stops the run
    now, with the one line a user needs (a ConfigError: exit 2, no traceback)."""
    pending = {f for _, f in warm}
    site_of = {id(f): site for site, f in warm}
    deadline = time.monotonic() + timeout_s
    while pending:
        done, pending = wait(pending, timeout=max(deadline - time.monotonic(), 0.0), return_when=FIRST_EXCEPTION)
        if not done:
            break
        for f in done:
            if (exc := f.exception()) is None:
                continue
            if client is not None and (err := _unimportable(exc, client.code.partition(":")[0])):
                for rest in pending:
                    rest.add_done_callback(lambda f: f.exception())
                raise ConfigError("<job>", "client.python_path", _import_fix(client, site_of[id(f)], err))
            progress.say(f"warning: warm-up failed on a worker: {exc}")
    if pending:
        progress.say(f"warning: {len(pending)} warm-up task(s) unanswered after round.deadline_s={timeout_s:g} s; "
                     "starting round 1 without them")
        for f in pending:
            f.add_done_callback(lambda f: f.exception())


def _unimportable(exc: BaseException, module: str) -> str | None:
    """``"ModuleNotFoundError: No module named 'pkg'"`` when `exc` says `module` (or a package
    above it) cannot be imported where the task ran, else None. HTEX re-raises the worker's own
    ImportError here; the chain is walked in case something wraps it (Parsl's
    RemoteExceptionWrapper keeps it as ``e_value``), and Globus Compute sends only the remote
    traceback's text (``remote_data``), whose last line is then read. An error of the client's
    own code is a ClientCodeError and never counts: its module did import."""
    def names(name: str | None) -> bool:
        return bool(name) and (module == name or module.startswith(f"{name}."))

    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or type(e).__name__ == "ClientCodeError":
            continue
        seen.add(id(e))
        if isinstance(e, ImportError) and names(e.name):
            return f"{type(e).__name__}: {e}"
        if isinstance(text := getattr(e, "remote_data", None), str):
            last = (text.strip().splitlines() or [""])[-1].strip()
            m = re.match(r"(ModuleNotFoundError|ImportError): No module named '([\w.]+)'", last)
            if m and names(m.group(2)):
                return last
        todo += [getattr(e, "e_value", None), getattr(e, "__cause__", None), getattr(e, "__context__", None)]
    return None


def _import_fix(client: ClientSpec, site: str, err: str) -> str:
    """What to set when `site`'s workers cannot import the client module the driver imported."""
    module = client.code.partition(":")[0]
    top = module.partition(".")[0]
    if client.python_path:
        return (f"site {site}'s workers cannot import {module} ({err}), though it imports here from "
                f"client.python_path {client.python_path}: that site needs {top} under one of those directories "
                f"on its own disk, or on its PYTHONPATH (a remote site's worker_init)")
    home = _home(top)
    where = f"[{home}]" if home else f"[the directory holding {top}]"
    return (f"site {site}'s workers cannot import {module} ({err}), which imports here only through this "
            f"process's sys.path; set client.python_path: {where} (on a site sharing this disk), or put the "
            f"directory holding {top} on the site's PYTHONPATH (a remote site's worker_init)")


def _home(top: str) -> str | None:
    """The directory on the driver's sys.path that holds the top-level module `top`."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package: the directory above its own
        return str(Path(next(iter(spec.submodule_search_locations))).parent)
    return str(Path(spec.origin).parent) if spec.origin else None


def sweep_lag(job: Job, strategy) -> int:  # noqa: ANN001 - a Strategy
    """Rounds whose store objects may still be read: asynchronous clients train from the globals
    of the last max_staleness steps, and a late client (round.late=carry) from its round's."""
    if strategy.asynchronous:
        return getattr(strategy.opts, "max_staleness", 0) + 1
    return job.round.max_staleness + 1 if job.round.late == "carry" else 0


def _loop(drv: Driver, done: int, held: list[dict]) -> str:
    """Stage 5; returns why the run stopped before its last round ('' when it did not). The
    initial params come in a list emptied here, so that no frame but the loop's keeps them: at
    1 GB they would otherwise stay in memory beside every later round's (issue 18)."""
    params_bytes = codec.nbytes(codec.down(held[0], drv.job.compression.down))  # what one client receives
    if drv.strategy.asynchronous:
        asynchronous.run(drv, done, held.pop(), params_bytes)
        return "on request"
    return synchronous.run_rounds(drv, done, held.pop(), params_bytes)


def _summarise(drv: Driver, start: Start, t_start: float, why: str) -> RunResult:
    job, done = drv.job, start.done
    last = drv.writer.table.last
    took = time.time() - t_start
    acc = last.get("test_accuracy")
    reached = int(last.get("round", done))
    drv.progress.summary(
        f"{job.name}: {drv.writer.table.count} rounds done"
        + (f" (stopped {why} at round {reached} of {job.rounds})" if reached < job.rounds else "")
        + (f", test accuracy {acc:.4f}" if acc is not None else "")
        + f", {took:.1f} s this run ({(took / max(reached - done, 1)):.2f} s/round); results in "
          f"{rows_path(drv.run_dir)}")
    return RunResult(drv.run_dir, reached, done or None, last, stopped=reached < job.rounds)
