"""FedAvg: the example-weighted average of client models.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017. Each selected client runs local SGD from the global model; the server replaces the
global model with the mean of the returned models weighted by each client's number of examples.
"""

from __future__ import annotations

from typing import Literal

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, weighted_mean


class FedAvgOptions(StrategyOptions):
    name: Literal["fedavg"] = "fedavg"


class FedAvg(Strategy):
    name = "fedavg"
    mean_based = True
    Options = FedAvgOptions

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        return weighted_mean(updates, global_params)
