"""What makes an update acceptable: the one rule set every check of an update applies.

A broken site (a diverged client, another model version, a corrupted transfer) or a hostile one can
send anything. The same rules decide, wherever an update or a site's partial is looked at:

- the driver's check of a whole update (flow/rounds/validate.py `check`, the gather's accept hook),
- the streaming fold, which checks an update piece by piece as it reads it from the store
  (flow/rounds/fold.py `Spill`, through `Rules.header` / `piece` / `end`),
- the driver's check of a site's partial (flow/rounds/twotier.py),
- the site's aggregator, which checks each client's stored update before adding it
  (apps/siteagg.py), and secure aggregation's masked vectors (there and flow/privacy/secagg.py).

The rules, their union: exactly the global model's tensor names in its order; each a numpy array
(or numpy scalar) of the model's shape; the model's dtype (a site's partial: any integer or float
dtype, since integer buffers arrive as float64 means); only finite values; a positive example
count; and, with ``round.max_update_norm``, a distance from the global model (over the float
tensors, in float64) no larger than the bound. A step count is a whole number, in the budget the
driver sent; SCAFFOLD's control deltas fit the trainable (float) tensors and are finite; a masked
vector is one uint64 vector of the round's length. Counts and sizes are whole numbers in range,
timings finite seconds, metrics at most `MAX_METRICS` finite numbers with plain names, so the
rounds table can always hold them.

It lives in `apps/` because the site's aggregator applies it too, and `apps/` imports nothing of
the driver. A failed rule raises `InvalidUpdate`, whose message is the reason the rounds table
records for the client.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from fedgrid.apps.kinds import WEIGHT, infer_kinds
from fedgrid.apps.records import Extras, StateDigest

MAX_EXAMPLES = 2**31 - 1  # more than any one client holds; keeps example-weighted sums exact in float64
MAX_BYTES = 2**40  # a TiB: any larger size claim is a lie (and would overflow the rounds table's int64 sums)
METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
MAX_METRICS = 32
LABEL_MAX = 200  # a worker or batch-job label: the rounds table holds it, it is not a payload


class InvalidUpdate(ValueError):
    """An update that failed validation; the message is the reason recorded for the client."""


# -- numbers a site reports --------------------------------------------------------------------------

def count(value: Any, what: str, lo: int, hi: int) -> int:
    """`value` as a Python int in [lo, hi] (bools and floats are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= int(value) <= hi:
        raise InvalidUpdate(f"rejected: {what} is {str(value)[:40]!r}, expected a whole number in [{lo}, {hi}]")
    return int(value)


def _real(v: Any) -> float | None:
    """A finite-or-not real number as a float; None for anything else (bools are not numbers here)."""
    try:
        return float(v) if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) else None
    except OverflowError:  # an int beyond float's range
        return None


def seconds(name: Any, v: Any) -> float:
    """A timing a site reports, as seconds >= 0."""
    f = _real(v)
    if f is None or not math.isfinite(f) or f < 0:
        raise InvalidUpdate(f"rejected: timing {str(name)[:40]!r} is {str(v)[:30]!r}, expected seconds >= 0")
    return f


def metrics(raw: Any) -> dict[str, float]:
    """A client's metrics as the rounds table can hold them: at most MAX_METRICS names of letters,
    digits and underscores, each a finite real number."""
    if not isinstance(raw, dict) or len(raw) > MAX_METRICS:
        raise InvalidUpdate(f"rejected: metrics must be a dict of at most {MAX_METRICS} floats")
    out = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not METRIC_NAME.match(k):
            raise InvalidUpdate(f"rejected: metric name {str(k)[:50]!r} (letters, digits and _, at most 48)")
        f = _real(v)
        if f is None or not math.isfinite(f):
            raise InvalidUpdate(f"rejected: metric {k} is {str(v)[:30]!r}, expected a finite number")
        out[k] = f
    return out


def examples(n: Any) -> None:
    """An update's weight: a positive example count."""
    if not n or n < 0:
        raise InvalidUpdate(f"rejected: num_examples is {n}")


def digest(ref: Any, key: str) -> StateDigest:
    """A stored object's {sha256, nbytes} as a site reports it: 64 hex digits and a size."""
    sha = ref.get("sha256") if isinstance(ref, dict) else None
    if not isinstance(sha, str) or len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
        raise InvalidUpdate(f"rejected: extras.{key} must be {{sha256: 64 hex digits, nbytes: int}}")
    return {"sha256": sha, "nbytes": count(ref.get("nbytes"), f"{key}.nbytes", 1, MAX_BYTES)}


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


# -- extras ------------------------------------------------------------------------------------------

def envelope_extras(raw: Mapping[str, Any], steps_limit: Callable[[], int]) -> Extras:
    """What a site says beside its params, before anything is fetched: the step count a whole
    number within `steps_limit()` (the budget the driver sent), the labels strings (cut to
    LABEL_MAX), `cold` a bool, a state version a digest; as plain Python values, so the round
    file's JSON and the rounds table can always be written. Returns the checked extras (the same
    keys in the same order); other keys are left to `payloads` and to the strategy that reads them."""
    out = dict(raw)
    if "steps" in out:
        out["steps"] = count(out["steps"], "extras.steps", 0, steps_limit())
    for key in ("worker", "batch_job"):
        if out.get(key) is not None and not isinstance(out[key], str):
            raise InvalidUpdate(f"rejected: extras.{key} is {type(out[key]).__name__}, expected a string")
        if out.get(key) is not None:
            out[key] = out[key][:LABEL_MAX]
    if "cold" in out and not isinstance(out["cold"], bool):
        raise InvalidUpdate("rejected: extras.cold must be true or false")
    if "state" in out:  # the client state version it wrote: becomes the client's if the update is accepted
        out["state"] = digest(out["state"], "state")
    return cast(Extras, out)  # (the keys the driver reads are checked above; what aggregation reads, in `payloads`)


def payloads(extras: Mapping[str, Any], like: Mapping[str, np.ndarray]) -> None:
    """The extras an aggregation reads, against the global model: a step count (FedNova divides by
    it) and SCAFFOLD's control deltas."""
    steps = extras.get("steps")
    if steps is not None and (not isinstance(steps, int | np.integer) or steps < 0):
        raise InvalidUpdate(f"rejected: extras.steps is {steps!r}, expected a count of local steps")
    control(extras.get("scaffold_delta_c") or {}, like)


def control(delta: Any, like: Mapping[str, np.ndarray], complete: bool = False) -> None:
    """SCAFFOLD's control deltas ``c_i+ - c_i``: for float tensors of the model (the trainable
    ones), each of its shape and finite; `complete`: one for every weight (a site's aggregator
    averages them all). Statistics buffers (a BatchNorm's running mean and variance) have no
    gradient, so a client sends no delta for them: they are the float tensors whose names end in
    a statistics suffix (apps/kinds.py)."""
    if not isinstance(delta, Mapping):
        raise InvalidUpdate(f"rejected: scaffold_delta_c is {type(delta).__name__}, expected a dict of arrays")
    for name, a in delta.items():
        g = like.get(name) if isinstance(name, str) else None
        if g is None or not _floating(g) or not isinstance(a, np.ndarray | np.generic) or np.shape(a) != g.shape \
                or np.asarray(a).dtype.kind not in "fiu" or not np.isfinite(a).all():
            raise InvalidUpdate(f"rejected: scaffold_delta_c[{str(name)[:40]!r}] does not fit the model or is "
                                "not finite")
    if complete and (missing := [k for k, kind in infer_kinds(like).items() if kind == WEIGHT and k not in delta]):
        raise InvalidUpdate(f"rejected: scaffold_delta_c lacks {missing[:3]}")


# -- params --------------------------------------------------------------------------------------------

def _floating(g: np.ndarray) -> bool:
    return bool(np.issubdtype(g.dtype, np.floating))


def names(got: Sequence[Any], like: Mapping[str, np.ndarray]) -> None:
    """Exactly the global model's tensor names, in its order."""
    if list(got) != list(like):
        missing = [k for k in like if k not in got]
        extra = [k for k in got if k not in like]
        raise InvalidUpdate(f"rejected: tensor names differ from the global model's (missing {missing[:3]}, "
                            f"unexpected {[str(k)[:40] for k in extra[:3]]})" if missing or extra
                            else "rejected: tensors out of order")


def masked(params: Any, size: int) -> np.ndarray:
    """Secure aggregation: one masked vector (uint64, the round's `size` values) and nothing else;
    a masked update reveals nothing else to check."""
    m = params.get("masked") if isinstance(params, dict) and len(params) == 1 else None
    if not isinstance(m, np.ndarray) or m.dtype != np.uint64 or m.shape != (size,):
        raise InvalidUpdate(f"rejected: expected one masked uint64 vector of {size} values")
    return m


@dataclass(slots=True)
class Rules:
    """What an update's params must be against the global model `like`. `partial`: a site's mean
    (apps/siteagg.py), whose integer buffers arrive as float64 means: any float or integer dtype.
    `max_norm`: the bound on the distance from `like` (``round.max_update_norm``).

    Usable whole (`params`) or streamed (`header` with each tensor's name, shape and dtype, then
    `piece` for consecutive pieces of each, then `end`), so the fold applies exactly these rules
    while it reads an update from the store, without holding it."""

    like: Mapping[str, np.ndarray]
    max_norm: float | None = None
    partial: bool = False
    sq: float = 0.0  # squared distance so far (only with max_norm)

    def tensor(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """One tensor's shape and dtype."""
        g = self.like[name]
        if shape != g.shape:
            raise InvalidUpdate(f"rejected: {name} has shape {shape}, expected {g.shape}")
        if dtype.kind not in "fiu" if self.partial else dtype != g.dtype:
            raise InvalidUpdate(f"rejected: {name} has dtype {dtype}, expected {g.dtype}")

    def header(self, entries: Iterable[tuple[str, tuple[int, ...], np.dtype]]) -> None:
        """Names, shapes and dtypes, before any value is read."""
        entries = list(entries)
        names([n for n, _, _ in entries], self.like)
        for name, shape, dtype in entries:
            self.tensor(name, shape, dtype)

    def piece(self, name: str, start: int, x: np.ndarray) -> None:
        """Values `x` of tensor `name` from flat element `start`: finite; their distance counted."""
        if x.dtype.kind not in "fc":  # integers are always finite; a count is not a weight to bound
            return
        if not np.isfinite(x).all():
            raise InvalidUpdate(f"rejected: {name} has non-finite values")
        if self.max_norm is not None and x.dtype.kind == "f" and _floating(g := self.like[name]):
            d = x.astype(np.float64).reshape(-1) - g.reshape(-1)[start:start + x.size]
            self.sq += float(np.dot(d, d))

    def end(self) -> None:
        """The distance bound, once every piece is in."""
        if self.max_norm is not None and math.sqrt(self.sq) > self.max_norm:
            raise InvalidUpdate(f"rejected: update norm {math.sqrt(self.sq):.3g} > round.max_update_norm "
                                f"{self.max_norm:g}")

    def tensors(self, params: dict[Any, Any]) -> None:
        """Each tensor of a whole update whose names are the model's: an array, its shape and
        dtype, its values (the first broken rule is the reason)."""
        for name in self.like:
            a = params[name]
            if not isinstance(a, np.ndarray | np.generic):  # (a numpy scalar is a 0-d tensor)
                raise InvalidUpdate(f"rejected: {name} is {type(a).__name__}, expected an array")
            a = np.asarray(a)
            self.tensor(name, a.shape, a.dtype)
            self.piece(name, 0, a)

    def params(self, params: Any) -> None:
        """A whole update's (or partial's) params: names, tensors, then the distance bound."""
        names(_tensor_dict(params), self.like)
        self.tensors(params)
        self.end()


def _tensor_dict(params: Any) -> list[Any]:
    if not isinstance(params, dict):
        raise InvalidUpdate(f"rejected: params are {type(params).__name__}, expected a dict of arrays")
    return list(params)


def update(params: Any, num_examples: Any, extras: Mapping[str, Any], raw_metrics: Any,
           like: Mapping[str, np.ndarray], max_norm: float | None = None, with_params: bool = True) -> dict[str, float]:
    """A client's whole update, the rules in this order: tensor names, example count, each
    tensor, the extras aggregation reads, metrics, the norm bound. `with_params` False: the params
    are checked elsewhere (the fold checks them as it reads them from the store). Returns the
    metrics as the rounds table holds them."""
    rules = Rules(like, max_norm)
    if with_params:
        names(_tensor_dict(params), like)
    examples(num_examples)
    if with_params:
        rules.tensors(params)
    payloads(extras, like)
    out = metrics(raw_metrics)
    rules.end()
    return out
