"""The Strategy interface every aggregation rule implements (DESIGN.md, Contracts)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedgrid.apps.update import ClientUpdate

Params = dict[str, np.ndarray]


class StrategyOptions(BaseModel):
    """A strategy's block of the job file; each strategy subclasses it with its own keys and a
    ``name: Literal[...]``, so the job schema is a union discriminated by name and a misspelled
    option is rejected with that strategy's valid keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Strategy:
    """configure -> per-client instructions; aggregate -> next global params; state for checkpoints.

    Strategies do numpy math on the driver only. Their state is a dict of arrays so it checkpoints
    to Arrow with the model and survives a resume exactly. `asynchronous` strategies are driven by
    the buffered asynchronous loop (flow/asyncloop.py) instead of synchronous rounds.
    """

    name = "base"
    Options: ClassVar[type[StrategyOptions]]
    asynchronous: ClassVar[bool] = False
    needs_store: ClassVar[bool] = False  # keeps per-client state in the data plane (SCAFFOLD)

    def __init__(self, opts: StrategyOptions | None = None):
        self.opts = opts if opts is not None else self.Options()

    def bind(self, clients: int, store_url: str | None) -> None:
        """Told by the driver before round 1: how many clients the job has, and the store's URL."""

    def configure(self, rnd: int, clients: list[int], profiles: dict[str, np.ndarray]) -> dict[int, dict[str, Any]]:
        """Extra per-client instructions merged into each train task (none by default)."""
        return {c: {} for c in clients}

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[dict[str, Any]]) -> Params:
        raise NotImplementedError

    def state(self) -> Params:
        return OrderedDict()

    def load_state(self, state: Params) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state, checkpoint has {list(state)}")


def cast_like(value: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """A float64 result back in the global tensor's dtype (integer buffers are rounded)."""
    return value.astype(ref.dtype) if np.issubdtype(ref.dtype, np.floating) else np.rint(value).astype(ref.dtype)


def is_float(a: np.ndarray) -> bool:
    return bool(np.issubdtype(np.asarray(a).dtype, np.floating))


def example_weights(updates: list[ClientUpdate]) -> np.ndarray:
    """Each update's share of the aggregate: examples x scale (a stale update weighs less), summing to 1."""
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    w = np.array([u.num_examples * u.scale for u in updates], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("updates carry zero examples in total")
    return w / w.sum()


def weighted_mean(updates: list[ClientUpdate], like: Params) -> Params:
    """Example-weighted mean of client params, streamed: one accumulator per tensor, no stacking.

    Each update weighs ``num_examples * scale``; scale is below 1 only for a late update carried
    into a later round (staleness weighting).

    Accumulates in float64 for exactness across many clients, then casts back to each tensor's dtype.
    Non-float tensors (e.g. BatchNorm's num_batches_tracked) take the weighted mean rounded.
    """
    p = example_weights(updates)
    out: Params = OrderedDict()
    for name, ref in like.items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for pi, u in zip(p, updates, strict=True):
            acc += np.asarray(u.params[name], dtype=np.float64) * pi
        out[name] = cast_like(acc, ref)
    return out
