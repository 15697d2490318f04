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
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from fedgrid.apps.update import ClientUpdate

MAX_EXAMPLES = 2**31 - 1  # more than any one client holds; keeps example-weighted sums exact in float64
MAX_BYTES = 2**40  # a TiB: any larger size claim is a lie (and would overflow the rounds table's int64 sums)

METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
MAX_METRICS = 32


class InvalidUpdate(ValueError):
    """An update that failed validation; the message is the reason recorded for the client."""


def _count(value: Any, what: str, lo: int, hi: int) -> int:
    """`value` as a Python int in [lo, hi] (bools and floats are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= int(value) <= hi:
        raise InvalidUpdate(f"rejected: {what} is {str(value)[:40]!r}, expected a whole number in [{lo}, {hi}]")
    return int(value)


def inside(uri: str, area: str) -> bool:
    """Whether a reference names an object in this run's area of the store (links resolved, so
    one inside that points out is outside)."""
    if "://" in area and not area.startswith("file://"):
        root = area.rstrip("/") + "/"
        return uri.startswith(root) and ".." not in uri[len(root):].split("/")
    if "://" in uri and not uri.startswith("file://"):
        return False
    root = os.path.realpath(area.removeprefix("file://")) + os.sep
    return os.path.realpath(uri.removeprefix("file://")).startswith(root)


def step_budget(epochs: int, batch_size: int, paced: int | None = None) -> Callable[[int], int]:
    """The most local steps a client may claim for `num_examples`: the paced budget the driver
    sent, or its epochs of minibatches. FedNova weighs by the claim, so a larger one is a lie."""
    return lambda n: int(paced) if paced else epochs * math.ceil(n / batch_size)


def examples_limit(known: float, cap: int | None, growth: float) -> int:
    """The most examples a client may claim: the job's cap, and `growth` times the count it
    answered before (`known`, NaN or 0 when it never answered)."""
    limit = cap or MAX_EXAMPLES
    if known and math.isfinite(known) and known > 0:
        limit = min(limit, max(1, int(known * growth)))
    return int(limit)


def envelope(u: Any, client: int, site: str, rnd: int, area: str | None = None,
             budget: Callable[[int], int] | None = None, max_examples: int = MAX_EXAMPLES) -> Any:
    """What a site says about its answer, checked against what the driver sent before anything is
    fetched or decoded: the same client, site and round, counts and sizes that are whole numbers in
    range, finite non-negative timings, and metrics the rounds table can hold. Values are turned
    into plain Python numbers, so the round file's JSON and the rounds table can always be written.
    A by-reference update must point into this run's area of the store (`area`), where the
    site was told to write it: anywhere else (a path on the driver, another URL) is refused
    before it is opened. Works on a ClientUpdate and on a ClientEvaluation."""
    from fedgrid.apps.update import ClientEvaluation

    if not isinstance(u, ClientUpdate | ClientEvaluation):
        raise InvalidUpdate(f"rejected: the site answered {type(u).__name__}, expected a ClientUpdate")
    wrong_type = any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in (u.client, u.round))
    if wrong_type or u.client != client or u.site != site or u.round != rnd:
        raise InvalidUpdate(f"rejected: the answer is for client {str(u.client)[:20]!r} at {str(u.site)[:40]!r}, "
                            f"round {str(u.round)[:20]!r}; client {client} at {site!r} was sent round {rnd}")
    u.client, u.round = int(client), int(rnd)
    u.num_examples = _count(u.num_examples, "num_examples", 1, max_examples)
    u.metrics = metrics(u.metrics)
    if isinstance(u, ClientEvaluation):
        return u
    # the aggregation weight and the staleness are the driver's to set, never the site's
    u.scale, u.staleness = 1.0, 0
    if not isinstance(u.codec, str):
        raise InvalidUpdate(f"rejected: codec is {type(u.codec).__name__}, expected a codec name")
    u.wire_nbytes = _count(u.wire_nbytes, "wire_nbytes", 0, MAX_BYTES)
    if u.ref is not None:
        _count(u.ref.nbytes, "ref.nbytes", 0, MAX_BYTES)
        if not isinstance(u.ref.uri, str) or area is None or not inside(u.ref.uri, area):
            raise InvalidUpdate(f"rejected: the update's reference {str(u.ref.uri)[:80]!r} is outside this run's "
                                "area of the store")
    if not isinstance(u.timings, dict) or not isinstance(u.extras, dict) or not isinstance(u.params, dict):
        raise InvalidUpdate("rejected: timings, extras and params must be dicts")
    u.timings = {str(k)[:40]: seconds(k, v) for k, v in list(u.timings.items())[:16]}
    if "steps" in u.extras:
        limit = budget(u.num_examples) if budget is not None else MAX_EXAMPLES
        u.extras["steps"] = _count(u.extras["steps"], "extras.steps", 0, limit)
    for key in ("worker", "batch_job"):
        if u.extras.get(key) is not None and not isinstance(u.extras[key], str):
            raise InvalidUpdate(f"rejected: extras.{key} is {type(u.extras[key]).__name__}, expected a string")
        if u.extras.get(key) is not None:
            u.extras[key] = u.extras[key][:200]  # a label, not a payload: the rounds table holds it
    for key in ("cold",):
        if key in u.extras and not isinstance(u.extras[key], bool):
            raise InvalidUpdate(f"rejected: extras.{key} must be true or false")
    if "state" in u.extras:  # the client state version it wrote: becomes the client's if the update is accepted
        u.extras["state"] = _digest(u.extras["state"], "state")
    return u


def _digest(ref: Any, key: str) -> dict[str, Any]:
    """A stored object's {sha256, nbytes} as a site reports it: 64 hex digits and a size."""
    sha = ref.get("sha256") if isinstance(ref, dict) else None
    if not isinstance(sha, str) or len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
        raise InvalidUpdate(f"rejected: extras.{key} must be {{sha256: 64 hex digits, nbytes: int}}")
    return {"sha256": sha, "nbytes": _count(ref.get("nbytes"), f"{key}.nbytes", 1, MAX_BYTES)}


def seconds(name: Any, v: Any) -> float:
    """A timing a site reports, as seconds >= 0 (InvalidUpdate otherwise)."""
    try:
        f = float(v) if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) else None
    except OverflowError:
        f = None
    if f is None or not math.isfinite(f) or f < 0:
        raise InvalidUpdate(f"rejected: timing {str(name)[:40]!r} is {str(v)[:30]!r}, expected seconds >= 0")
    return f


def accept(u: Any, client: int, site: str, rnd: int, like: dict[str, np.ndarray], area: str | None,
           max_norm: float | None = None, budget: Callable[[int], int] | None = None,
           max_examples: int = MAX_EXAMPLES) -> ClientUpdate:
    """A synchronous round's whole check of one answer, in order: its envelope against what was
    sent, the by-reference params fetched and verified, a compressed delta decoded against the
    global model, then the params themselves (the gather's accept hook)."""
    return check(envelope(u, client, site, rnd, area, budget, max_examples).resolve().decode(like), like, max_norm)


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
