"""What goes to a tracker: the job's settings as flat params, a round's row as scalar metrics."""

from __future__ import annotations

import math
from typing import Any

MAX_PARAM = 500  # characters of one param value (MLflow takes 6,000; a long list says little more)


def job_params(job: Any) -> dict[str, str]:
    """The job's settings as ``{"train.lr": "0.05", "sites.0.executor.kind": "htex", ...}``."""
    out: dict[str, str] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                walk(f"{prefix}.{i}", x)
        else:
            out[prefix] = str(v)[:MAX_PARAM]

    walk("", job.model_dump(mode="json", exclude={"tracking"}))
    return out


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """Every finite number of a round's row (its lists of clients and failures are not metrics;
    their counts, bytes and seconds are)."""
    return {k: float(v) for k, v in row.items() if k != "round" and isinstance(v, int | float)
            and not isinstance(v, bool) and math.isfinite(v)}
