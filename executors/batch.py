"""What batch-scheduler sites (slurm, pbs) share at run time: asking the scheduler itself how
each block is, and a provider that Parsl polls often enough to replace a lost block in seconds.

Parsl's own view of a block is not enough. Its Slurm provider polls every 60 s, and without an
accounting database it falls back to ``squeue``, which omits finished jobs, so a cancelled or
timed-out block reads as COMPLETED. The driver therefore asks the scheduler directly (`query`),
including finished jobs, with each block's state, the scheduler's reason and the walltime left;
flow/rounds/blocks.py turns that into "queued", "lost" and "about to expire" for the rounds.

A kind that uses this module provides ``SCHEDULER`` (its name) and ``query(job_ids)`` returning
``{job_id: Block}`` (None when the scheduler could not be asked); everything else (polling,
replacing, draining) is shared, so PBS gets it too. A site's `Scheduler` comes from its Spec
(``SpecBase.scheduler``): its kind's module, or for a `parsl` site the module of the scheduler its
provider submits to.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

log = logging.getLogger("fedgrid")

# the scheduler's own words for a block that will never run tasks again
ENDED = frozenset({"CANCELLED", "TIMEOUT", "COMPLETED", "FAILED", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "REVOKED", "GONE", "FINISHED"})
WAITING = frozenset({"PENDING", "CONFIGURING", "HELD", "QUEUED", "REQUEUED", "SUSPENDED"})


@dataclass
class Block:
    """One block as the scheduler sees it: Parsl's block id, the batch job id, the scheduler's state
    (RUNNING, PENDING, CANCELLED, TIMEOUT, ...), its reason (e.g. PartitionDown), seconds left."""

    block: str
    job: str
    state: str
    reason: str = ""
    left_s: float | None = None

    def row(self) -> dict[str, Any]:
        return {"block": self.block, "job": self.job, "state": self.state, "reason": self.reason,
                "left_s": self.left_s}


class Scheduler(NamedTuple):
    """A batch scheduler as the driver asks it about a site's blocks: its name (in reasons and
    `fedgrid status`) and its ``query(job_ids)``."""

    name: str
    query: Callable[[list[str]], dict[str, Block] | None]


def run(cmd: list[str], timeout: float = 10.0, empty_if: str = "") -> str | None:
    """A scheduler command's output, or None when it failed (logged; the caller keeps its last
    view). A failure whose message contains `empty_if` (e.g. every job id already purged) is an
    empty answer instead."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("%s: %s", cmd[0], e)
        return None
    if out.returncode != 0:
        if empty_if and empty_if in out.stderr:
            return ""
        log.warning("%s failed (%d): %s", " ".join(cmd), out.returncode, out.stderr.strip()[:200])
        return None
    return out.stdout


def seconds(left: str) -> float | None:
    """Slurm's time format (``[days-]hours:minutes:seconds``, ``minutes:seconds``) in seconds;
    None for UNLIMITED, INVALID, NOT_SET."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", left.strip())
    if not m:
        return None
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


def watched(provider_cls: type, poll_s: float) -> type:
    """`provider_cls` polled every `poll_s` seconds by Parsl's job status poller (Slurm's provider
    says 60), so a replaced or lost block is seen by Parsl's scaling strategy within seconds."""

    class Watched(provider_cls):
        @property
        def status_polling_interval(self) -> int:
            return max(1, int(poll_s))

    Watched.__name__ = Watched.__qualname__ = provider_cls.__name__
    return Watched
