"""`fedgrid status RUN_DIR`: what a run directory says about its run, read from its files only.

The reading is flow/results/status.py (the report and the round loop's trackers use it too, and
flow/rounds/ must not import the commands); this module is the command's name for it.
"""

from __future__ import annotations

from fedgrid.flow.results.status import (
    blocks,
    failures_by_reason,
    metrics,
    per_site,
    reason_kind,
    status_and_rows,
    status_info,
)

__all__ = ["blocks", "failures_by_reason", "metrics", "per_site", "reason_kind", "status_and_rows", "status_info"]
