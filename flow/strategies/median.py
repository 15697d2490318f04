"""Coordinate-wise median: each parameter is the median of the clients' values for it.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
A minority of clients sending arbitrary values (a broken site, a poisoned one) cannot move the
median of a coordinate beyond the range of the honest clients' values, where the mean follows
any single outlier without bound. It ignores example counts, so it costs some accuracy under
very unequal shards and under non-IID data (``bucket`` averages small random groups first,
flow/strategies/robust.py); it needs the clients' tensors side by side, so it stacks one tensor
at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.strategies.base import Params, cast_like
from fedgrid.flow.strategies.robust import RobustOptions, RobustStrategy


class MedianOptions(RobustOptions):
    name: Literal["median"] = "median"


class Median(RobustStrategy):
    name = "median"
    Options = MedianOptions
    opts: MedianOptions

    def combine(self, rnd: int, global_params: Params, updates: list[ClientUpdate]) -> Params:
        return OrderedDict((name, cast_like(np.median(stack(updates, name), axis=0), g))
                           for name, g in global_params.items())


def stack(updates: list[ClientUpdate], name: str) -> np.ndarray:
    """One tensor of every update, side by side (k x shape) in float64."""
    return np.stack([np.asarray(u.params[name], dtype=np.float64) for u in updates])
