"""Every update is checked before it can reach the aggregate.

A broken site (a diverged client, a different model version, a corrupted transfer) or a hostile
one can send anything. An update is accepted only if it has exactly the global model's tensor
names, shapes and dtypes, only finite values, a positive example count, and — when
``round.max_update_norm`` is set — an update (its distance from the global model, over the float
tensors) no longer than that bound. A rejected update becomes that client's failure with the
reason (in the rounds table), does not count toward the quorum, and never stops the round.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from fedgrid.apps.update import ClientUpdate

METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
MAX_METRICS = 32


class InvalidUpdate(ValueError):
    """An update that failed validation; the message is the reason recorded for the client."""


def check(u: ClientUpdate, like: dict[str, np.ndarray], max_norm: float | None = None) -> ClientUpdate:
    """Return `u` if it may be aggregated against the global params `like`; raise InvalidUpdate."""
    if list(u.params) != list(like):
        missing = [k for k in like if k not in u.params]
        extra = [k for k in u.params if k not in like]
        raise InvalidUpdate(f"rejected: tensor names differ from the global model's (missing {missing[:3]}, "
                            f"unexpected {extra[:3]})" if missing or extra else "rejected: tensors out of order")
    if not u.num_examples or u.num_examples < 0:
        raise InvalidUpdate(f"rejected: num_examples is {u.num_examples}")
    sq = 0.0
    for name, g in like.items():
        a = np.asarray(u.params[name])
        if a.shape != g.shape:
            raise InvalidUpdate(f"rejected: {name} has shape {a.shape}, expected {g.shape}")
        if a.dtype != g.dtype:
            raise InvalidUpdate(f"rejected: {name} has dtype {a.dtype}, expected {g.dtype}")
        if np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise InvalidUpdate(f"rejected: {name} has non-finite values")
            if max_norm is not None:
                d = a.astype(np.float64) - g
                sq += float(np.dot(d.ravel(), d.ravel()))
    steps = u.extras.get("steps")
    if steps is not None and (not isinstance(steps, int | np.integer) or steps < 0):
        raise InvalidUpdate(f"rejected: extras.steps is {steps!r}, expected a count of local steps")
    for name, a in (u.extras.get("scaffold_delta_c") or {}).items():
        if name not in like or np.shape(a) != like[name].shape or not np.isfinite(a).all():
            raise InvalidUpdate(f"rejected: scaffold_delta_c[{name!r}] does not fit the model or is not finite")
    u.metrics = metrics(u.metrics)
    if max_norm is not None and math.sqrt(sq) > max_norm:
        raise InvalidUpdate(f"rejected: update norm {math.sqrt(sq):.3g} > round.max_update_norm {max_norm:g}")
    return u


def metrics(raw: Any) -> dict[str, float]:
    """A client's metrics as the rounds table can hold them: at most MAX_METRICS names of letters,
    digits and underscores, each a finite real number (bools are not numbers here)."""
    if not isinstance(raw, dict) or len(raw) > MAX_METRICS:
        raise InvalidUpdate(f"rejected: metrics must be a dict of at most {MAX_METRICS} floats")
    out = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not METRIC_NAME.match(k):
            raise InvalidUpdate(f"rejected: metric name {str(k)[:50]!r} (letters, digits and _, at most 48)")
        try:
            f = float(v) if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) else None
        except OverflowError:  # an int beyond float's range
            f = None
        if f is None or not math.isfinite(f):
            raise InvalidUpdate(f"rejected: metric {k} is {str(v)[:30]!r}, expected a finite number")
        out[k] = f
    return out
