"""The Python API: everything the CLI does, callable from a pipeline script.

    import fedgrid

    job = fedgrid.load_job("examples/fmnist.yaml", ["rounds=20"])
    result = fedgrid.run(job)                      # or fedgrid.run("examples/fmnist.yaml")
    fedgrid.run("mine.yaml", python_path=["src"])  # the workers import the job's client from src/ too
    fedgrid.run(job, more=5)                       # five more rounds from the newest checkpoint
    info = fedgrid.status(result.run_dir)          # what `fedgrid status --json` prints
    fedgrid.report(result.run_dir)                 # PNGs + summary.md
    fedgrid.export(result.run_dir, fmt="safetensors")
    fedgrid.schedule(job, cron="0 2 * * *", rounds_per_run=5)   # blocks; stop= an Event to end it

Inside a Parsl workflow (``parsl.load(config)`` done), a job runs on the workflow's
DataFlowKernel, after the apps it depends on, and hands its result on to later apps:

    prepared = [preprocess(site) for site in ("hpc-a", "cloud-b")]   # the workflow's own apps
    trained = fedgrid.submit(job, after=prepared)                   # a Future of the RunResult
    score = evaluate(trained)                                       # an app that runs once it is done

where the job's sites name the workflow's executors (``executor: {kind: parsl, label: hpc-a}``);
``fedgrid.run(job, dfk=parsl.dfk())`` is the same without dependencies, in the calling thread.

A job is a Job, a path to a YAML file, or a dict shaped like one. Errors are the same exceptions
the CLI turns into messages (ConfigError, RoundFailed, RunDirBusy, ResumeRefused). Parsl starts
worker processes, so a script calling `run` needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fedgrid.flow.config import Job, load_job, parse_job
from fedgrid.flow.rounds.gather import when_done


def as_job(job: Job | str | Path | dict[str, Any], overrides: list[str] | None = None) -> Job:
    if isinstance(job, Job):
        return parse_job(job.model_dump(), "<job>", overrides) if overrides else job
    if isinstance(job, dict):
        return parse_job(job, "<job>", overrides)
    return load_job(job, overrides)


def with_python_path(job: Job, python_path: list[str | Path] | None) -> Job:
    """`job` with ``client.python_path`` set to `python_path` (relative to the current directory),
    checked again: the check imports the client class from there, as every site's workers will."""
    if not python_path:
        return job
    if job.client is None:
        from fedgrid.flow.config import ConfigError

        raise ConfigError("<job>", "client.python_path", "the job runs the built-in client, which needs no "
                          "python_path; expected a client block (client: package.module:Class)")
    raw = job.model_dump()
    raw["client"]["python_path"] = [os.path.abspath(os.path.expanduser(d)) for d in python_path]
    return parse_job(raw, "<job>")


def run(job: Job | str | Path | dict[str, Any], *, base: Path | None = None, fresh: bool = False,
        quiet: bool = False, more: int | None = None, stop: threading.Event | None = None,
        log_format: str = "text", python_path: list[str | Path] | None = None, dfk: Any = None) -> Any:
    """Run or resume a job (see runner.run); returns a RunResult with the rounds table rows.

    `python_path`: directories that hold the job's client package, put on the path of the driver
    and of every site's workers before the class is imported (the job file's
    ``client.python_path``, which it replaces): a script can import its own client package, and the
    workers, started elsewhere, could not.

    `dfk`: a Parsl workflow's DataFlowKernel to run in, instead of one of the run's own. A site
    whose executor block is ``{kind: parsl, label: L}`` runs on the workflow's executor L; any other
    site's executor is added to the DFK (and found there by a later run). fedgrid shuts none of them
    down and never cleans the DFK up: the workflow does, when it ends."""
    from fedgrid.flow.rounds.runner import run as _run

    return _run(for_workflow(job, python_path, dfk), base=base, fresh=fresh, quiet=quiet, more=more, stop=stop,
                log_format=log_format, dfk=dfk)


def submit(job: Job | str | Path | dict[str, Any], *, after: Iterable[Future] = (), dfk: Any = None,
           base: Path | None = None, fresh: bool = False, quiet: bool = False, more: int | None = None,
           stop: threading.Event | None = None, log_format: str = "text",
           python_path: list[str | Path] | None = None) -> Future:
    """Run `job` in a Parsl workflow once every future in `after` is done (Parsl AppFutures or any
    concurrent.futures.Future); returns at once a Future of its RunResult, which Parsl apps take as
    an argument like an AppFuture: they start when the run has finished, and get the RunResult.

    `dfk`: the workflow's DataFlowKernel, by default the one ``parsl.load`` made (see `run`); with
    none loaded, the run makes its own. The job is read and checked once its dependencies are done
    (it may name files they write), so a mistake in it is the future's ConfigError. A dependency
    that failed or was cancelled fails the future with DependencyFailed, and the run never starts.
    Once they are done the run gets a thread of its own, which the program waits for at exit (while
    they are pending nothing does: a dependency that never finishes holds no exit up). Cancelling
    the returned future before then means the run never starts; `stop` ends a started run after a
    round, as for `run`. The other arguments are `run`'s."""
    go = functools.partial(run, job, base=base, fresh=fresh, quiet=quiet, more=more, stop=stop,
                           log_format=log_format, python_path=python_path, dfk=loaded_dfk() if dfk is None else dfk)
    result: Future = Future()
    needs = list(after)
    start = threading.Thread(target=_run_after, args=(result, needs, go), name="fedgrid-submit").start
    when_done(needs, start)
    return result


class DependencyFailed(Exception):
    """A future that a submitted run waited for failed or was cancelled, so the run did not start.
    `failed` holds those futures; the first one's exception is the cause."""

    def __init__(self, failed: list[Future]):
        self.failed = failed
        first = failed[0]
        why = "cancelled" if first.cancelled() else f"{type(first.exception()).__name__}: {first.exception()}"
        super().__init__(f"{len(failed)} future(s) the run waited for failed, so it did not start; the first: {why}")


def _run_after(result: Future, after: list[Future], go: Callable[[], Any]) -> None:
    """`result` gets what `go()` returns or raises, unless one of `after` (all done) failed."""
    if not result.set_running_or_notify_cancel():  # cancelled while it waited to start
        return
    try:
        if failed := [f for f in after if f.cancelled() or f.exception() is not None]:
            raise DependencyFailed(failed) from (None if failed[0].cancelled() else failed[0].exception())
        result.set_result(go())
    except BaseException as e:  # noqa: BLE001 - whatever stops the run is the future's to tell
        result.set_exception(e)


def loaded_dfk() -> Any:
    """The DataFlowKernel ``parsl.load`` made in this process and not yet cleaned up, or None (a
    workflow that cleaned its DFK up without ``parsl.clear()`` leaves it loaded, and joining it
    would wait for executors that are gone)."""
    import parsl
    from parsl.errors import NoDataFlowKernelError

    try:
        dfk = parsl.dfk()
    except NoDataFlowKernelError:
        return None
    return None if getattr(dfk, "cleanup_called", False) else dfk


def for_workflow(job: Job | str | Path | dict[str, Any], python_path: list[str | Path] | None, dfk: Any) -> Job:
    """`job` parsed so that its `label` sites read their capabilities from `dfk`'s executors (a
    Job parsed before is parsed again, for this DFK)."""
    from fedgrid.executors.parsl import workflow

    with workflow(dfk):
        if dfk is not None and isinstance(job, Job):
            job = job.model_dump()
        return with_python_path(as_job(job), python_path)


def schedule(job: Job | str | Path | dict[str, Any], cron: str | None = None, rounds_per_run: int | None = None,
             *, base: Path | None = None, firings: int | None = None, stop: threading.Event | None = None,
             quiet: bool = True) -> int:
    """Recurring training (flow/commands/schedule.py); a path is re-read at every firing. Returns the runs done."""
    from fedgrid.flow.commands.schedule import Scheduler
    from fedgrid.flow.rounds.runner import run as _run

    return Scheduler(load=lambda: as_job(job), cron=cron, rounds_per_run=rounds_per_run, run=_run,
                     base=base or Path.cwd(), stop=stop or threading.Event(), firings=firings, quiet=quiet,
                     say=(lambda s: None) if quiet else print).serve()


def status(run_dir: str | Path) -> dict[str, Any]:
    from fedgrid.flow.commands.status import status_info

    return status_info(Path(run_dir))


def report(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    from fedgrid.flow.commands.report import write_report

    return write_report(Path(run_dir), Path(out) if out else None)


def export(run_dir: str | Path, rnd: int | None = None, fmt: str = "safetensors",
           out: str | Path | None = None, client: int | None = None) -> Path:
    """The model of round `rnd` (the newest when None) as a file; with `client`, that client's
    personalized model (its personal layers, or Ditto's personal model) instead of the global one."""
    from fedgrid.flow.commands.export import export_model

    return export_model(Path(run_dir), rnd, fmt, Path(out) if out else None, client)
