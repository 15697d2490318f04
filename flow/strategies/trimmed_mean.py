"""Coordinate-wise trimmed mean: drop the largest and smallest values of each coordinate, average the rest.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
With ``beta`` the share trimmed at each end (``floor(beta * k)`` of k clients), up to that many
arbitrary clients per coordinate are cut off before the mean; it keeps more of the honest
clients' information than the median. beta 0 is the unweighted mean. With ``bucket`` s the rule
sees k/s bucket means (flow/strategies/robust.py), and beta must cover the bad buckets.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.strategies.base import Params, cast_like
from fedgrid.flow.strategies.median import stack
from fedgrid.flow.strategies.robust import RobustOptions, RobustStrategy


class TrimmedMeanOptions(RobustOptions):
    name: Literal["trimmed_mean"] = "trimmed_mean"
    beta: Annotated[float, Field(ge=0, lt=0.5)] = 0.2  # share cut at each end


class TrimmedMean(RobustStrategy):
    name = "trimmed_mean"
    Options = TrimmedMeanOptions
    opts: TrimmedMeanOptions

    def combine(self, rnd: int, global_params: Params, updates: list[ClientUpdate]) -> Params:
        k = len(updates)
        cut = math.floor(self.opts.beta * k)
        out: Params = OrderedDict()
        for name, g in global_params.items():
            s = np.sort(stack(updates, name), axis=0)
            out[name] = cast_like(s[cut:k - cut].mean(axis=0), g)
        return out
