"""What a user sees while a job runs: a live bar on a terminal, plain lines elsewhere, and a log.

On a terminal a rich progress bar shows the rounds done and, inside a round, the clients answered;
each finished round prints one line above it. When stdout is not a terminal (CI, cron, pipes) the
same round lines are printed plainly. `--quiet` keeps only the final summary. Everything also goes
to ``fedgrid.log`` in the run directory, as text or (``--log-format json``) one JSON object a line
for log shippers (Loki, Elasticsearch, Splunk), with the run directory in every record.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("fedgrid")


LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, run_dir, and the
    exception text when there is one."""

    def __init__(self, run_dir: Path):
        super().__init__()
        # on the instance: as a class attribute mypy would take the builtin for a method
        self.converter = time.gmtime
        self.run_dir = str(run_dir)

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage(),
               "run_dir": self.run_dir}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_log(run_dir: Path, fmt: str = "text") -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "fedgrid.log")
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter(run_dir)
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def round_line(row: dict[str, Any], total: int, show: str | None = None) -> str:
    """One round in a line; `show` (round.show) puts that rounds-table column first."""
    acc = row.get("test_accuracy")
    loss = row.get("test_loss")
    acc_s = f"acc {acc:.4f}" if acc is not None else "acc   -   "
    if show:
        v = row.get(show)
        acc_s = f"{show} {v:.4f}" if isinstance(v, int | float) else f"{show}   -   "
    train_loss = row.get("train_loss")
    loss_s = (f"loss {loss:.4f}" if loss is not None else
              f"train loss {train_loss:.4f}" if train_loss is not None else "train loss   -   ")
    retry = f"  (attempt {row['attempt']})" if row.get("attempt", 1) > 1 else ""
    return (f"round {row['round']:>4}/{total}  {acc_s}  {loss_s}  clients {row['clients_ok']} ok, "
            f"{row['clients_failed']} failed  {row['seconds']:.2f} s{retry}")


class RunProgress:
    """Round progress for one run; a no-op bar when quiet or not on a terminal."""

    def __init__(self, total_rounds: int, done: int, quiet: bool = False, stream=None, show: str | None = None):
        self.total, self.quiet, self.show = total_rounds, quiet, show
        self.console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal and not quiet
        self._bar: Progress | None = None
        if self.live:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True)
            self._rounds = self._bar.add_task("rounds", total=total_rounds, completed=done)
            self._clients = self._bar.add_task("clients", total=1, visible=False)
            self._bar.start()

    def resume_at(self, done: int, total: int | None = None) -> None:
        """Start the rounds bar at the rounds a resumed run already has (and, for ``--rounds +N``,
        the target known only once the checkpoint is read)."""
        if total is not None:
            self.total = total
        if self._bar:
            self._bar.update(self._rounds, completed=done, total=self.total)

    def say(self, text: str) -> None:
        log.info(text)
        if not self.quiet:
            self.console.print(text)

    def round_started(self, rnd: int, clients: int) -> None:
        if self._bar:
            self._bar.reset(self._clients, total=clients, description=f"round {rnd} clients", visible=True)

    def client_done(self, client: int, ok: bool) -> None:
        if self._bar:
            self._bar.advance(self._clients)

    def round_done(self, row: dict[str, Any]) -> None:
        self.say(round_line(row, self.total, self.show))
        if self._bar:
            self._bar.update(self._rounds, completed=row["round"])

    def close(self) -> None:
        if self._bar:
            self._bar.stop()
            self._bar = None

    def summary(self, text: str) -> None:
        self.close()
        log.info(text)
        self.console.print(text)
