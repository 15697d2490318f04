"""Where the seconds before round 1 go: a start-up timeline, written to fedgrid.log.

Every scheduled firing, short job and test pays the start-up, and its stages overlap (the sites'
workers start while the driver builds the model; each site's warm-up ends on its own), so a line
of marks is what tells a user, or us, which stage to shorten. A run from the command line counts
from its process's start (the interpreter and imports included); a run from a Python program
from the call to ``run``.
"""

from __future__ import annotations

import threading
import time

_EARLY: list[tuple[str, float]] = []  # marks the command line made before the run began
_FROM_PROCESS: list[bool] = [False]


def early(stage: str) -> None:
    """A mark before ``run`` (the command line's: imports done, job read); the run's timeline then
    counts from the process's start."""
    _FROM_PROCESS[0] = True
    _EARLY.append((stage, time.time()))


def process_start() -> float:
    """When this process started (epoch seconds)."""
    import psutil

    return float(psutil.Process().create_time())


class Timeline:
    """Marks of one run's start-up, from the process's start or from the call to ``run``."""

    def __init__(self) -> None:
        self.from_process = _FROM_PROCESS[0]
        self.origin = process_start() if self.from_process else time.time()
        self.marks = list(_EARLY)
        _EARLY.clear()
        _FROM_PROCESS[0] = False  # a later run in this process (a schedule's next firing) counts from run()
        self._lock = threading.Lock()

    def mark(self, stage: str) -> None:
        with self._lock:
            self.marks.append((stage, time.time()))

    def text(self) -> str:
        """``start-up (s from the process's start): imports 0.61, job read 0.83 (+0.22), ...``."""
        with self._lock:
            marks = sorted(self.marks, key=lambda m: m[1])
        origin = "the process's start" if self.from_process else "run()"
        parts, last = [], self.origin
        for stage, t in marks:
            parts.append(f"{stage} {t - self.origin:.2f} (+{t - last:.2f})")
            last = t
        return f"start-up timeline, seconds from {origin}: " + ", ".join(parts)
