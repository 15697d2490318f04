"""FedNova: FedAvg with each client's update normalised by its number of local steps.

Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020. When clients run different numbers of local steps (paced stragglers,
unequal shards), plain FedAvg over-weights the clients that stepped most and converges to a
different objective. FedNova averages per-step updates instead:
``G' = G - tau_eff * sum_i p_i (G - x_i) / tau_i`` with ``p_i`` the example weights and
``tau_eff = sum_i p_i tau_i``. With equal step counts it is exactly FedAvg.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import (
    Params,
    Strategy,
    StrategyOptions,
    cast_like,
    example_weights,
    weighted_sum,
)


class FedNovaOptions(StrategyOptions):
    name: Literal["fednova"] = "fednova"


class FedNova(Strategy):
    name = "fednova"
    Options = FedNovaOptions

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        p = example_weights(updates)
        tau = np.array([max(int(u.extras.get("steps", 1)), 1) for u in updates], dtype=np.float64)
        tau_eff = float((p * tau).sum())
        # G - tau_eff * sum_i (p_i / tau_i) (G - x_i) = G (1 - tau_eff * a) + tau_eff * sum_i (p_i / tau_i) x_i,
        # with a = sum_i p_i / tau_i: one streamed weighted sum per tensor
        w = p / tau
        a = float(w.sum())
        out: Params = OrderedDict()
        for name, g in global_params.items():
            new = np.asarray(g, dtype=np.float64) * (1.0 - tau_eff * a)
            new += tau_eff * weighted_sum([u.params[name] for u in updates], w, exact=True)
            out[name] = cast_like(new, g)
        return out
