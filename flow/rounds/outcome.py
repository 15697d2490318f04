"""How a run ends: its result, or the errors that stop it at the last good round."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RoundFailed(Exception):
    """A round missed its quorum on every attempt; the run stops at the last good round."""


class ResumeRefused(Exception):
    """The run directory holds rounds of a job this one cannot continue."""


class SiteDown(Exception):
    """A client was not sent: its site has no workers (recorded as the client's failure)."""


@dataclass
class RunResult:
    run_dir: Path
    rounds_done: int
    resumed_from: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False  # stopped early on request (SIGTERM), after a finished round

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}
