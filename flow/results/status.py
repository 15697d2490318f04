"""What a run directory says about its run, read from its files only (`fedgrid status`; the
report plots the same).

Everything comes from the newest verified round file, rounds.parquet, the run lock,
schedule.json and sites.json (batch blocks; their states asked of the scheduler again where it
answers), so it works while a run is going on, after it ended, and on a copy of the run
directory on another machine. Nothing here writes.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import holder
from fedgrid.flow.persist.table import reconcile_rows

if TYPE_CHECKING:
    from fedgrid.executors.batch import Block

SCHEDULE_FILE = "schedule.json"  # what `fedgrid schedule` (flow/commands/schedule.py) keeps in the run directory


def read_schedule(run_dir: Path) -> dict[str, Any] | None:
    """schedule.json with ``active``: whether its scheduler still holds the run directory."""
    path = run_dir / SCHEDULE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    state["active"] = holder(run_dir / ".schedule.lock") is not None
    return state


def reason_kind(reason: str) -> str:
    """A failure reason's kind: the part before the first colon ("deadline", "FloatingPointError",
    "InvalidUpdate", "site down"), so reasons that differ only in numbers count together."""
    return (reason or "unknown").split(":", 1)[0].strip()[:60] or "unknown"


def _median(xs: Iterable[float | None]) -> float | None:
    have = [x for x in xs if x is not None]
    return statistics.median(have) if have else None


def per_site(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per site over all rounds: updates and failures, median train and queue seconds per update."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        for u in r.get("updates") or []:
            s = out.setdefault(u["site"], {"updates": 0, "failures": 0, "train": [], "queue": []})
            s["updates"] += 1
            s["train"].append(u.get("train_s"))
            s["queue"].append(u.get("queue_s"))
        for f in r.get("failures") or []:
            s = out.setdefault(f.get("site") or "?", {"updates": 0, "failures": 0, "train": [], "queue": []})
            s["failures"] += 1
    return {site: {"updates": s["updates"], "failures": s["failures"], "train_s_median": _median(s["train"]),
                   "queue_s_median": _median(s["queue"])} for site, s in sorted(out.items())}


def blocks(run_dir: Path) -> dict[str, Any]:
    """The batch sites' blocks the driver last wrote (sites.json), with their states asked of the
    scheduler again now where it answers (a finished run's blocks read CANCELLED or COMPLETED,
    not what they were when the driver last looked)."""
    try:
        sites = json.loads((run_dir / "sites.json").read_text())
    except (OSError, ValueError):
        return {}
    from fedgrid.executors import batch

    for v in sites.values():
        query = _query(v.get("scheduler"))
        jobs = [b["job"] for b in v.get("blocks", []) if b.get("job")]
        now = query(jobs) if query and jobs else None
        if now is None:
            continue
        for b in v.get("blocks", []):
            fresh = now.get(b["job"]) or batch.Block(b["block"], b["job"], "GONE")
            b.update(state=fresh.state, reason=fresh.reason, left_s=fresh.left_s)
    return sites


def _query(scheduler: str | None) -> Callable[[list[str]], dict[str, Block] | None] | None:
    from fedgrid.executors import batch_kinds

    kind = batch_kinds().get(scheduler or "")
    return kind.query if kind is not None and shutil.which(kind.COMMAND) else None


def failures_by_reason(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(reason_kind(f.get("reason", "")) for r in rows for f in r.get("failures") or [])
                .most_common())


def metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest round's client metrics: ``train`` (train_<name> means) and, from the newest round
    that had a federated evaluation, ``federated`` ({name: {mean, min, p10}}, its round and clients)."""
    out: dict[str, Any] = {}
    if rows:
        last = rows[-1]
        out["train"] = {k[6:]: v for k, v in last.items() if k.startswith("train_") and v is not None
                        and isinstance(v, int | float)}
    fed = next((r for r in reversed(rows) if r.get("fed_clients")), None)
    if fed is not None:
        names = dict.fromkeys(m["name"] for c in fed["fed_clients"] for m in c["metrics"])
        out["federated"] = {"round": fed["round"], "clients": len(fed["fed_clients"]),
                            "failed": len(fed.get("fed_failures") or []),
                            "metrics": {n: {"mean": fed.get(f"fed_{n}"), "min": fed.get(f"fed_{n}_min"),
                                            "p10": fed.get(f"fed_{n}_p10")} for n in names}}
    return out


def status_info(run_dir: Path) -> dict[str, Any]:
    return status_and_rows(run_dir)[0]


def status_and_rows(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The status, and the rows it was computed from (the report plots them: read once)."""
    state, skipped = ckpt.latest_valid(run_dir, quarantine=False)
    done = state.round if state else 0
    rows = reconcile_rows(run_dir, done)
    last = rows[-1] if rows else {}
    sched = read_schedule(run_dir)
    accs = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    return {
        "run_dir": str(run_dir), "job": state.job.get("name") if state else None,
        "rounds_done": done, "rounds_target": state.job.get("rounds") if state else None,
        "running_pid": holder(run_dir / ".lock"),
        "last_round": last.get("round"), "last_accuracy": last.get("test_accuracy"),
        "last_loss": last.get("test_loss"), "best_accuracy": max(accs, default=None),
        "seconds_per_round": _median([r.get("seconds") for r in rows]),
        "total_failures": sum(r.get("clients_failed") or 0 for r in rows),
        "failures_by_reason": failures_by_reason(rows),
        "sites": per_site(rows),
        "blocks": blocks(run_dir),
        "metrics": metrics(rows),
        "schedule": sched,
        "next_firing": sched.get("next_firing") if sched and sched.get("active") else None,
        "last": last,
        "skipped": [{"file": str(p), "reason": w} for p, w in skipped],
    }, rows
