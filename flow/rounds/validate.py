"""Every update is checked before it can reach the aggregate.

A broken site (a diverged client, a different model version, a corrupted transfer) or a hostile
one can send anything. An update is accepted only if it has exactly the global model's tensor
names, shapes and dtypes, only finite values, a positive example count, and — when
``round.max_update_norm`` is set — an update (its distance from the global model, over the float
tensors) no longer than that bound. A rejected update becomes that client's failure with the
reason (in the rounds table), does not count toward the quorum, and never stops the round.

The rules themselves are apps/checks.py, shared with the streaming fold, the check of a site's
partial and the site's own aggregator; this module is the driver's side: what was sent to whom
(`envelope`), the budgets it allows (`step_budget`, `examples_limit`), and the order of a round's
check (`accept`). `InvalidUpdate` and the limits are re-exported for the modules that import them here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fedgrid.apps import checks
from fedgrid.apps.checks import (  # the shared rules' names, as other driver modules import them from here
    MAX_BYTES,
    MAX_EXAMPLES,
    MAX_METRICS,
    METRIC_NAME,
    InvalidUpdate,
    inside,
    metrics,
    seconds,
)
from fedgrid.apps.update import ClientEvaluation, ClientUpdate

__all__ = ["MAX_BYTES", "MAX_EXAMPLES", "MAX_METRICS", "METRIC_NAME", "InvalidUpdate", "accept", "check", "envelope",
           "as_update", "examples_limit", "inside", "metrics", "seconds", "step_budget"]


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
             budget: Callable[[int], int] | None = None,
             max_examples: int = MAX_EXAMPLES) -> ClientUpdate | ClientEvaluation:
    """What a site says about its answer, checked against what the driver sent before anything is
    fetched or decoded: the same client, site and round, counts and sizes that are whole numbers in
    range, finite non-negative timings, and metrics the rounds table can hold. Values are turned
    into plain Python numbers, so the round file's JSON and the rounds table can always be written.
    A by-reference update must point into this run's area of the store (`area`), where the
    site was told to write it: anywhere else (a path on the driver, another URL) is refused
    before it is opened. Works on a ClientUpdate and on a ClientEvaluation."""
    if not isinstance(u, ClientUpdate | ClientEvaluation):
        raise InvalidUpdate(f"rejected: the site answered {type(u).__name__}, expected a ClientUpdate")
    wrong_type = any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in (u.client, u.round))
    if wrong_type or u.client != client or u.site != site or u.round != rnd:
        raise InvalidUpdate(f"rejected: the answer is for client {str(u.client)[:20]!r} at {str(u.site)[:40]!r}, "
                            f"round {str(u.round)[:20]!r}; client {client} at {site!r} was sent round {rnd}")
    u.client, u.round = int(client), int(rnd)
    u.num_examples = checks.count(u.num_examples, "num_examples", 1, max_examples)
    u.metrics = metrics(u.metrics)
    if isinstance(u, ClientEvaluation):
        return u
    # the aggregation weight and the staleness are the driver's to set, never the site's
    u.scale, u.staleness = 1.0, 0
    if not isinstance(u.codec, str):
        raise InvalidUpdate(f"rejected: codec is {type(u.codec).__name__}, expected a codec name")
    u.wire_nbytes = checks.count(u.wire_nbytes, "wire_nbytes", 0, MAX_BYTES)
    if u.ref is not None:
        checks.count(u.ref.nbytes, "ref.nbytes", 0, MAX_BYTES)
        if not isinstance(u.ref.uri, str) or area is None or not inside(u.ref.uri, area):
            raise InvalidUpdate(f"rejected: the update's reference {str(u.ref.uri)[:80]!r} is outside this run's "
                                "area of the store")
    if not isinstance(u.timings, dict) or not isinstance(u.extras, dict) or not isinstance(u.params, dict):
        raise InvalidUpdate("rejected: timings, extras and params must be dicts")
    u.timings = {str(k)[:40]: seconds(k, v) for k, v in list(u.timings.items())[:16]}
    n = u.num_examples
    u.extras = checks.envelope_extras(u.extras, lambda: budget(n) if budget is not None else MAX_EXAMPLES)
    return u


def accept(u: Any, client: int, site: str, rnd: int, like: dict[str, np.ndarray], area: str | None,
           max_norm: float | None = None, budget: Callable[[int], int] | None = None,
           max_examples: int = MAX_EXAMPLES) -> ClientUpdate:
    """A synchronous round's whole check of one answer, in order: its envelope against what was
    sent, the by-reference params fetched and verified, a compressed delta decoded against the
    global model, then the params themselves (the gather's accept hook)."""
    return check(as_update(envelope(u, client, site, rnd, area, budget, max_examples)).resolve().decode(like), like,
                 max_norm)


def as_update(u: ClientUpdate | ClientEvaluation) -> ClientUpdate:
    """An envelope that must be a training answer (an evaluation is refused where an update is due)."""
    if not isinstance(u, ClientUpdate):
        raise InvalidUpdate(f"rejected: the site answered {type(u).__name__}, expected a ClientUpdate")
    return u


def check(u: ClientUpdate, like: dict[str, np.ndarray], max_norm: float | None = None) -> ClientUpdate:
    """Return `u` if it may be aggregated against the global params `like`; raise InvalidUpdate
    (the rules: apps/checks.py)."""
    u.metrics = checks.update(u.params, u.num_examples, u.extras, u.metrics, like, max_norm)
    return u
