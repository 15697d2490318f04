"""Experiment tracking: each finished round's row, mirrored to MLflow and/or TensorBoard.

``tracking: {mlflow: {uri: ..., experiment: ...}, tensorboard: true}`` in the job (extra
``fedgrid[tracking]``). rounds.parquet stays the source of truth; a tracker is a copy that may lag.

- **One tracker run per run directory.** The MLflow run id is kept in ``<run_dir>/tracking.json``,
  so a resumed or scheduled run continues the same MLflow run. Before logging, each sink says
  the last step it already holds (MLflow: the metric history; TensorBoard: its event files). Rounds
  up to that step are never logged again, and rounds the tracker missed are logged from the rounds
  table first. That covers a server that was down and a driver that was killed.
- **Never in training's way.** Rows are handed to a background thread (`Tracking.round`, called
  by the round writer after a round's row is durable). A sink that raises (server down, disk
  full) is retried with backoff while later rows wait in the queue; the driver never waits on it.
  At the end of the run the queue is drained for at most ``drain_s``; what was not logged by then
  is said in one warning, and the next run of the directory logs it.
- **What is logged**: the job's settings as params (flattened keys, once), every numeric field of
  every round's row as a metric with step = round (central and federated evaluation, losses,
  clients ok and failed, bytes, seconds, epsilon, ...), and at the end the report's PNGs and the
  exported model as artifacts (MLflow).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fedgrid.flow.tracking.values import job_params, row_metrics

log = logging.getLogger("fedgrid")

__all__ = ["Sink", "Tracking", "job_params", "open_tracking", "row_metrics"]


class Sink(Protocol):
    """One tracking backend. Every method may raise; the caller retries."""

    name: str
    keeps_artifacts: bool  # whether `finish` stores the files it is given (else none are made for it)

    def open(self) -> int:
        """Connect (create or continue this run directory's tracker run); the last step it holds (0: none)."""

    def params(self, values: dict[str, str]) -> None: ...

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def finish(self, artifacts: list[Path]) -> None: ...


class Tracking:
    """Feeds every sink in round order, each on a thread of its own (one tracker that is down
    never holds up another), without blocking the driver."""

    def __init__(self, sinks: list[Sink], params: dict[str, str], backlog: Callable[[int], list[dict[str, Any]]],
                 retry_s: float = 1.0, max_retry_s: float = 30.0):
        """`backlog(after)`: the rows of rounds after `after`, from the rounds table (catch-up)."""
        self.feeds = [_Feed(s, params, backlog, retry_s, max_retry_s) for s in sinks]

    def round(self, row: dict[str, Any]) -> None:
        """A round's row is in the rounds table: log it (returns at once)."""
        for f in self.feeds:
            f.q.put(("round", dict(row)))

    def close(self, artifacts: Callable[[], list[Path]] | None = None, drain_s: float = 60.0) -> None:
        """The run is over: log what is queued and the artifacts, waiting at most `drain_s` in all."""
        # the report and the export cost seconds: made only for a tracker that keeps them
        files = _artifacts(artifacts) if any(f.sink.keeps_artifacts for f in self.feeds) else []
        end = time.monotonic() + drain_s
        for f in self.feeds:
            f.q.put(("finish", files))
        for f in self.feeds:
            f.thread.join(max(0.0, end - time.monotonic()))
        behind = [f"{f.sink.name} (logged up to round {max(f.last, 0)})" for f in self.feeds if f.thread.is_alive()]
        for f in self.feeds:
            f.stop.set()
        if behind:
            log.warning("tracking: %s did not catch up within %.0f s; every round is in rounds.parquet, and the next "
                        "run of this directory logs what is missing", ", ".join(behind), drain_s)


class _Feed:
    """One sink's queue and thread. The sink is opened at once (MLflow's import and database set-up
    take seconds: they overlap the sites' start), then given each row as it comes."""

    def __init__(self, sink: Sink, params: dict[str, str], backlog: Callable[[int], list[dict[str, Any]]],
                 retry_s: float, max_retry_s: float):
        self.sink, self.params, self.backlog = sink, params, backlog
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.q: queue.Queue = queue.Queue()
        self.last = -1  # -1: not opened yet
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name=f"fedgrid-tracking-{sink.name}", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        self._retry(self._ready)
        while not self.stop.is_set():
            kind, value = self.q.get()
            if kind == "round":
                self._retry(functools.partial(self._log, value))
            else:
                self._retry(functools.partial(self._finish, value))
                return

    def _ready(self) -> bool:
        """Open the sink once: its params, then every round it missed (from the rounds table)."""
        if self.last >= 0:
            return True
        last = int(self.sink.open())
        self.sink.params(self.params)
        for row in self.backlog(last):
            self.sink.metrics(int(row["round"]), row_metrics(row))
            last = int(row["round"])
        self.last = last
        return True

    def _finish(self, files: list[Path]) -> None:
        self._ready()
        self.sink.finish(files)

    def _log(self, row: dict[str, Any]) -> None:
        self._ready()
        step = int(row["round"])
        if step > self.last:  # never a step twice (a resumed run, a catch-up that got there first)
            self.sink.metrics(step, row_metrics(row))
            self.last = step

    def _retry(self, call: Callable[[], Any]) -> None:
        """`call` until it succeeds or the run is closing; a failure is logged once per outage."""
        wait, warned = self.retry_s, False
        while True:
            try:
                call()
                if warned:
                    log.warning("tracking: %s is back", self.sink.name)
                return
            except Exception as e:  # noqa: BLE001 - a tracker's trouble never reaches training
                if not warned:
                    log.warning("tracking: %s failed (%s: %s); retrying in the background", self.sink.name,
                                type(e).__name__, str(e)[:200])
                    warned = True
            if self.stop.wait(wait):
                return
            wait = min(wait * 2, self.max_retry_s)


def _artifacts(make: Callable[[], list[Path]] | None) -> list[Path]:
    if make is None:
        return []
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - a report that cannot be drawn is not the run's failure
        log.warning("tracking: could not make the artifacts (%s: %s)", type(e).__name__, e)
        return []


def open_tracking(job: Any, run_dir: Path) -> Tracking | None:
    """The job's trackers, or None when it has none. A missing extra is a ConfigError here, before round 1."""
    spec = job.tracking
    if spec is None or (spec.mlflow is None and not spec.tensorboard):
        return None
    from fedgrid.flow.persist.table import read_rows

    sinks: list[Sink] = []
    if spec.mlflow is not None:
        from fedgrid.flow.tracking.mlflow_sink import MLflowSink

        sinks.append(MLflowSink(spec.mlflow, job.name, run_dir))
    if spec.tensorboard:
        from fedgrid.flow.tracking.tensorboard_sink import TensorBoardSink

        sinks.append(TensorBoardSink(run_dir / "tensorboard"))
    return Tracking(sinks, job_params(job), lambda after: [r for r in read_rows(run_dir) if r["round"] > after],
                    retry_s=spec.retry_s)
