"""FedProx: FedAvg whose clients add a proximal term to their local objective.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020. Each client minimises
``loss(w) + mu / 2 * ||w - G||^2``, which keeps its local model near the global one however
far its own data would pull it: under non-IID data (and unequal local work) the clients drift
less and the average is better. The term is added inside the train app (its gradient
``mu * (w - G)`` is added to each step's gradient); the server side is plain FedAvg.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from fedgrid.apps.records import Instructions
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, weighted_mean


class FedProxOptions(StrategyOptions):
    name: Literal["fedprox"] = "fedprox"
    mu: Annotated[float, Field(ge=0)] = 0.01  # proximal weight; 0 is FedAvg


class FedProx(Strategy):
    name = "fedprox"
    mean_based = True
    needs = frozenset({"prox"})
    Options = FedProxOptions
    opts: FedProxOptions

    def configure(self, rnd: int, clients: list[int], profiles: dict[str, np.ndarray]) -> dict[int, Instructions]:
        return {c: {"prox_mu": self.opts.mu} for c in clients}

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        return weighted_mean(updates, global_params)
