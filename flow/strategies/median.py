"""Coordinate-wise median: each parameter is the median of the clients' values for it.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
A minority of clients sending arbitrary values (a broken site, a poisoned one) cannot move the
median of a coordinate beyond the range of the honest clients' values, where the mean follows
any single outlier without bound. It ignores example counts, so it costs some accuracy under
very unequal shards; it needs the clients' tensors side by side, so it stacks one tensor at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import numpy as np

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, cast_like


class MedianOptions(StrategyOptions):
    name: Literal["median"] = "median"


class Median(Strategy):
    name = "median"
    Options = MedianOptions

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[dict[str, Any]]) -> Params:
        if not updates:
            raise ValueError("cannot aggregate zero updates")
        return OrderedDict((name, cast_like(np.median(stack(updates, name), axis=0), g))
                           for name, g in global_params.items())


def stack(updates: list[ClientUpdate], name: str) -> np.ndarray:
    """One tensor of every update, side by side (k x shape) in float64."""
    return np.stack([np.asarray(u.params[name], dtype=np.float64) for u in updates])
