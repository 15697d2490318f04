"""Fault injection, driver side: which faults a task carries, and which sites are down this round.

The faults themselves happen at the site (:mod:`fedgrid.apps.faults`) or to the site's real
processes (:meth:`fedgrid.flow.rounds.sites.SiteRuntime.take_down`), never by faking an outcome in the
driver: the round loop, the gather and Parsl's retries see exactly what a real failure produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedgrid.flow.config import Job
from fedgrid.flow.persist.checkpoint import round_path


def for_task(job: Job, client: int, site: str, rnd: int, marker_dir: str, attempt: int = 1) -> dict[str, Any] | None:
    """The faults a client's task injects this round (None when it has none).

    With a `hold_at` rule in the job, building a task of round `rnd` also leaves the marker that
    round `rnd` has started, which a held client of round `rnd - 1` waits for."""
    p_ok, slow, delay, raise_, kill, hold, scale = 1.0, 1.0, 0.0, False, False, False, None
    if any(f.hold_at for f in job.faults):
        _started(marker_dir, rnd)
    for f in job.faults:
        if not f.hits(client, site):
            continue
        scale = f.scale_update if f.scale_update is not None else scale
        p_ok *= 1.0 - f.fail_p
        slow *= f.slowdown
        delay += f.delay_s
        raise_ |= rnd in f.raise_at
        kill |= rnd in f.kill_worker_at
        hold |= rnd in f.hold_at
    if p_ok == 1.0 and slow == 1.0 and delay == 0.0 and not raise_ and not kill and not hold and scale is None:
        return None
    return {"fail_p": 1.0 - p_ok, "slowdown": slow, "delay_s": delay, "raise": raise_, "kill": kill, "seed": job.seed,
            "attempt": attempt, "marker_dir": marker_dir, "scale_update": scale,
            "hold": _hold(job, rnd, marker_dir) if hold else None}


def _started(marker_dir: str, rnd: int) -> None:
    mark = Path(marker_dir) / f"started-r{rnd:06d}"
    if not mark.exists():
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()


def _hold(job: Job, rnd: int, marker_dir: str) -> dict[str, Any]:
    """What a held answer of round `rnd` waits for: the driver has moved on without it (a task of
    round `rnd + 1` was built, or round `rnd` -- FedBuff's server step -- is checkpointed, which is
    what frees the last round's), or the drill's release file; and for no longer than every attempt
    of the round can take (so a thread site never outlives a run that stopped early)."""
    run_dir = Path(marker_dir).parent
    return {"until": [str(Path(marker_dir) / f"started-r{rnd + 1:06d}"), str(round_path(run_dir, rnd)),
                      str(Path(marker_dir) / "release")],
            "max_s": (job.round.retries + 2) * job.round.deadline_s}


def lost_sites(job: Job, rnd: int) -> set[str]:
    """Sites whose workers a drill has taken away in round `rnd`."""
    return {f.site for f in job.faults if f.site and f.lost_from is not None
            and f.lost_from <= rnd and (f.lost_until is None or rnd < f.lost_until)}
