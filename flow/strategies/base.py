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

    def __init__(self, opts: StrategyOptions | None = None):
        self.opts = opts if opts is not None else self.Options()

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


def weighted_mean(updates: list[ClientUpdate], like: Params) -> Params:
    """Example-weighted mean of client params, streamed: one accumulator per tensor, no stacking.

    Each update weighs ``num_examples * scale``; scale is below 1 only for a late update carried
    into a later round (staleness weighting).

    Accumulates in float64 for exactness across many clients, then casts back to each tensor's dtype.
    Non-float tensors (e.g. BatchNorm's num_batches_tracked) take the weighted mean rounded.
    """
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    total = float(sum(u.num_examples * u.scale for u in updates))
    if total <= 0:
        raise ValueError("updates carry zero examples in total")
    out: Params = OrderedDict()
    for name, ref in like.items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for u in updates:
            acc += np.asarray(u.params[name], dtype=np.float64) * (u.num_examples * u.scale / total)
        out[name] = acc.astype(ref.dtype) if np.issubdtype(ref.dtype, np.floating) else np.rint(acc).astype(ref.dtype)
    return out
