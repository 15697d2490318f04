"""Recurring training: `fedgrid schedule JOB --cron EXPR --rounds-per-run N`.

A long-running process that, at each firing of a cron expression, continues the job from its
newest checkpoint for N more rounds (`runner.run(more=N)`). What a team running nightly training
needs from it:

- **No overlap.** Every run takes the run directory's lock (flow/persist/runlock.py), the same one a manual
  `fedgrid run` takes, so a firing that finds a run in progress is skipped and logged, and a manual
  run during a scheduled one is refused. A second scheduler on the same run directory is refused
  at start (``.schedule.lock``).
- **Missed firings coalesce.** When a run outlasts the interval (or the machine slept), the firings
  that passed meanwhile become one run, started at once; those folded away are counted in
  ``schedule.json`` (``coalesced``). A scheduler restarted after downtime that spanned a firing
  (by ``schedule.json``'s last firing) runs once at start, like systemd's ``Persistent=true``.
- **Clean stop.** SIGTERM finishes the round in progress, checkpoints it and exits 0; while
  waiting for the next firing it exits at once.
- **The job file is re-read at every firing**, so an edit (more sites, another learning rate)
  applies from the next run; a file that no longer validates skips that firing with the reason.

The state a status query needs (next firing, last result, coalesced count, the scheduler's pid) is in
``<run_dir>/schedule.json``, rewritten atomically after every change.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from croniter import croniter

from fedgrid.flow.config import ConfigError, Job
from fedgrid.flow.persist.runlock import RunLock
from fedgrid.flow.results.status import SCHEDULE_FILE as STATE
from fedgrid.flow.results.status import read_schedule as read_state

log = logging.getLogger("fedgrid")


class SchedulerBusy(Exception):
    """Another scheduler owns this run directory."""


def next_after(cron: str, t: float) -> float:
    """The first firing of `cron` strictly after epoch second `t` (local time, as crontab)."""
    return float(croniter(cron, datetime.fromtimestamp(t).astimezone()).get_next(float))


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass
class Scheduler:
    """Fires `load()`'s job every `cron` for `rounds_per_run` rounds until `stop` or `firings` runs.

    `load` re-reads the job file (with the command line's overrides) at every firing. `run` is
    `runner.run`, passed in so the Python API and the CLI share this loop.
    """

    load: Callable[[], Job]
    cron: str | None  # None: the job's schedule.cron
    rounds_per_run: int | None  # None: the job's schedule.rounds_per_run (1 without a schedule block)
    run: Callable[..., Any]
    base: Path
    stop: threading.Event = field(default_factory=threading.Event)
    firings: int | None = None  # stop after this many runs (None: forever)
    quiet: bool = False
    log_format: str = "text"
    say: Callable[[str], None] = print
    source: str = "<job>"  # the job file, for error messages

    def __post_init__(self) -> None:
        job = self.load()  # a bad job file fails now, not at 02:00
        self.cron = self.cron or (job.schedule.cron if job.schedule else None)
        if self.cron is None:
            raise ConfigError(self.source, "schedule.cron", "a cron expression (or pass --cron '0 2 * * *')")
        if not croniter.is_valid(self.cron):
            raise ConfigError("--cron", "", f"a cron expression such as '0 2 * * *', got {self.cron!r}")
        self.rounds_per_run = self.rounds_per_run or (job.schedule.rounds_per_run if job.schedule else 1)
        if self.rounds_per_run < 1:
            raise ConfigError("--rounds-per-run", "", f"a round count >= 1, got {self.rounds_per_run}")
        self.run_dir = job.run_dir(self.base).resolve()
        self.state: dict[str, Any] = {"cron": self.cron, "rounds_per_run": self.rounds_per_run, "pid": os.getpid(),
                                      "started_at": iso(time.time()), "runs": 0, "coalesced": 0, "skipped_busy": 0,
                                      "next_firing": None, "last_firing": None, "last_result": None}
        self.prev = read_state(self.run_dir)
        self._lock = RunLock(self.run_dir, ".schedule.lock", busy=lambda pid: SchedulerBusy(
            f"{self.run_dir}: another fedgrid schedule (pid {pid}) owns this run directory; stop it first"),
            share_group=job.checkpoint.share_group, source=self.source)

    # -- state --------------------------------------------------------------------------------
    def _save(self) -> None:
        path = self.run_dir / STATE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, path)

    # -- the loop -----------------------------------------------------------------------------
    def serve(self) -> int:
        """Run until stopped (or `firings` runs); returns how many runs completed."""
        from fedgrid.flow.persist.runlock import RunDirBusy
        from fedgrid.flow.rounds.runner import ResumeRefused, RoundFailed

        cron = self.cron
        assert cron is not None  # the job's, when not given: __post_init__ resolved it
        self._lock.acquire()
        try:
            now = time.time()
            due = next_after(cron, now)
            last = (self.prev or {}).get("last_firing")
            if last and next_after(cron, datetime.fromisoformat(last).timestamp()) <= now:
                self.say("schedule: a firing passed while no scheduler ran; running once now")
                due = now
            while not self.stop.is_set() and (self.firings is None or self.state["runs"] < self.firings):
                self.state["next_firing"] = iso(due)
                self._save()
                self.say(f"schedule: next run of {self.rounds_per_run} round(s) at {iso(due)}")
                if self.stop.wait(max(0.0, due - time.time())):
                    break
                fired = time.time()
                self.state["last_firing"] = iso(fired)
                try:
                    result = self.run(self.load(), base=self.base, more=self.rounds_per_run, stop=self.stop,
                                      quiet=self.quiet, log_format=self.log_format)
                    self.state["runs"] += 1
                    self.state["last_result"] = {"ok": True, "rounds_done": result.rounds_done,
                                                 "stopped": result.stopped, "at": iso(time.time())}
                except RunDirBusy as e:  # a manual run holds the directory: this firing is skipped
                    self.state["skipped_busy"] += 1
                    self.state["last_result"] = {"ok": False, "error": str(e), "at": iso(time.time())}
                    self.say(f"schedule: firing skipped: {e}")
                except (ConfigError, ResumeRefused, RoundFailed, OSError, ValueError) as e:
                    # the next firing tries again (a site back up, a fixed job file)
                    self.state["runs"] += 1
                    self.state["last_result"] = {"ok": False, "error": str(e), "at": iso(time.time())}
                    self.say(f"schedule: run failed: {e}")
                now = time.time()
                due = next_after(cron, fired)
                if due <= now:  # firings passed while the run went on: one catch-up run, at once
                    missed = 0
                    while due <= now:
                        missed += 1
                        due = next_after(cron, due)
                    self.state["coalesced"] += missed - 1
                    self.say(f"schedule: {missed} firing(s) passed during the last run; running once now")
                    due = now
            self.state["next_firing"] = None
            self._save()
            return int(self.state["runs"])
        finally:
            self._lock.release()
