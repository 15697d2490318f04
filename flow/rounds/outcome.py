"""How a run ends: its result, or the errors that stop it at the last good round."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any


class RoundFailed(Exception):
    """A round missed its quorum on every attempt; the run stops at the last good round."""


class ResumeRefused(Exception):
    """The run directory holds rounds of a job this one cannot continue."""


class SiteDown(Exception):
    """A client was not sent: its site has no workers, lost its block or waits in a queue
    (recorded as the client's failure, in the site's words: "site lost: ...", "queued: ...")."""

    plain = True  # the reason is the message itself (Failure.of), so reasons group by kind


@dataclass
class RunResult:
    """What a run reached. `rows` (the rounds table) is read from disk when first asked for: the
    driver never holds every round's row (a 10,000-round run would grow without bound)."""

    run_dir: Path
    rounds_done: int
    resumed_from: int | None
    last: dict[str, Any]
    stopped: bool = False  # stopped early on request (SIGTERM), after a finished round

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        from fedgrid.flow.persist.table import read_rows

        return [r for r in read_rows(self.run_dir) if r["round"] <= self.rounds_done]
