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

A job is a Job, a path to a YAML file, or a dict shaped like one. Errors are the same exceptions
the CLI turns into messages (ConfigError, RoundFailed, RunDirBusy, ResumeRefused). Parsl starts
worker processes, so a script calling `run` needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from fedgrid.flow.config import Job, load_job, parse_job


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
        log_format: str = "text", python_path: list[str | Path] | None = None) -> Any:
    """Run or resume a job (see runner.run); returns a RunResult with the rounds table rows.

    `python_path`: directories that hold the job's client package, put on the path of the driver
    and of every site's workers before the class is imported (the job file's
    ``client.python_path``, which it replaces): a script can import its own client package, and the
    workers, started elsewhere, could not."""
    from fedgrid.flow.rounds.runner import run as _run

    return _run(with_python_path(as_job(job), python_path), base=base, fresh=fresh, quiet=quiet, more=more,
                stop=stop, log_format=log_format)


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
