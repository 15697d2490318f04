"""A round's row of the rounds table (rounds.parquet), built from what the round gathered.

The synchronous rounds and the asynchronous loop's server steps both write their rows here, so
`status`, `report` and every reader see one schema (``ROWS_SCHEMA`` in flow/persist/table.py; its
record, every column named and typed, is apps/records.py `RoundRow`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedgrid.apps.records import RoundRow, SiteRow, UpdateRow, set_columns
from fedgrid.apps.store import Ref
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.rounds.gather import Gathered

if TYPE_CHECKING:
    from fedgrid.flow.rounds.modes import RoundMode


@dataclass
class RoundInfo:
    """How a round went, beside what it gathered: whom it selected, on which attempt, what it left
    out or let stand in, and the round mode that makes its contributions (flow/rounds/modes)."""

    selected: list[int]
    attempt: int = 1
    ref_down: int = 0  # bytes of global params sent by reference
    skipped: list[Failure] = field(default_factory=list)
    reused: list[ClientUpdate] = field(default_factory=list)
    mode: RoundMode | None = None  # how its updates became contributions (a synchronous round's)
    site_rows: list[SiteRow] | None = None  # round.aggregate: site: each site's partial (flow/rounds/twotier.py)

    def contributions(self, g: Gathered) -> list[ClientUpdate]:
        """What the strategy aggregates: the mode's (the updates and their stand-ins, the folded
        mean, the sites' partials or the unmasked sum), or without one the updates and stand-ins."""
        return self.mode.contributions(g, self.reused) if self.mode is not None else g.updates + self.reused


def ref_bytes(sent: dict[str, Any], sites: list[str], clients: list[int]) -> int:
    return sum(r.nbytes for c in clients if isinstance(r := sent[sites[c]], Ref))


def _update_row(u: ClientUpdate) -> UpdateRow:
    return {"client": u.client, "site": u.site, "examples": u.num_examples, "loss": u.metrics.get("loss"),
            "accuracy": u.metrics.get("accuracy"), "train_s": u.timings.get("train"),
            "queue_s": u.timings.get("queue"), "worker": u.extras.get("worker"),
            "batch_job": u.extras.get("batch_job"), "steps": u.extras.get("steps"),
            "staleness": u.staleness, "bytes_up": u.nbytes(), "load_s": u.timings.get("load"),
            "cold": u.extras.get("cold"), "metrics": [{"name": k, "value": v} for k, v in u.metrics.items()]}


def _weighted_mean(updates: list[ClientUpdate], key: str) -> float | None:
    """The example-weighted mean of a metric over the updates that report it."""
    have = [u for u in updates if key in u.metrics]
    n = sum(u.num_examples for u in have)
    return float(sum(u.metrics[key] * u.num_examples for u in have) / n) if n else None


def train_metrics(updates: list[ClientUpdate]) -> dict[str, float | None]:
    """``train_<name>`` for every metric the clients' train reported (loss and accuracy always
    have a column, None when no client reports them)."""
    names = dict.fromkeys(["loss", "accuracy", *(k for u in updates for k in u.metrics)])
    return {f"train_{k}": _weighted_mean(updates, k) for k in names}


def round_row(rnd: int, info: RoundInfo, g: Gathered, params_bytes: int, started: float,
              agg_s: float) -> RoundRow:
    """The row of round `rnd`; evaluation and privacy fill their columns in later. (Built in
    three steps only to keep the columns in the order rows have always had: the clients' metric
    columns after the test ones.)"""
    n = sum(u.num_examples for u in g.updates)
    row: RoundRow = {"round": rnd, "attempt": info.attempt, "started_at": started, "seconds": time.time() - started,
                     "test_accuracy": None, "test_loss": None}
    set_columns(row, train_metrics(g.updates))
    row.update({
        "clients_selected": len(info.selected), "clients_ok": len(g.updates), "clients_failed": len(g.failures),
        "participants": [u.client for u in g.updates], "failures": [f.row() for f in g.failures], "examples": n,
        "carried": [{"client": u.client, "staleness": u.staleness} for u in g.updates if u.staleness],
        "skipped": [f.row() for f in info.skipped],
        "reused": [{"client": u.client, "staleness": u.staleness} for u in info.reused],
        "updates": [_update_row(u) for u in g.updates],
        "bytes_down": params_bytes * len(info.selected),
        "bytes_up": sum(u.nbytes() for u in g.updates) + sum(s["bytes_up"] for s in info.site_rows or []),
        "bytes_in_sites": sum(s["bytes_in_site"] for s in info.site_rows) if info.site_rows is not None else None,
        "site_partials": info.site_rows,
        "bytes_by_ref": info.ref_down + sum(u.ref.nbytes for u in g.updates if u.ref is not None),
        "gather_s": g.seconds, "aggregate_s": agg_s, "eval_s": None,
        "client_train_s_max": max((u.timings.get("train", 0.0) for u in g.updates), default=0.0),
        "client_queue_s_max": max((u.timings.get("queue", 0.0) for u in g.updates), default=0.0),
    })
    return row
