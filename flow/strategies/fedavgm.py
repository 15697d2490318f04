"""FedAvgM: FedAvg with server momentum.

Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", 2019. The server treats ``G - avg`` (the round's pseudo-gradient) as a gradient
and takes a heavy-ball step: ``v <- momentum * v + (G - avg)``, ``G' = G - server_lr * v``. Under
non-IID data the momentum smooths the round-to-round swings that come from each round seeing a
different mix of classes. With momentum 0 and server_lr 1 it is exactly FedAvg. The velocity ``v``
is the strategy state, so it is checkpointed and a resumed run takes the same next step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import HeavyBall, Params, Strategy, StrategyOptions, server_step


class FedAvgMOptions(StrategyOptions):
    name: Literal["fedavgm"] = "fedavgm"
    server_lr: Annotated[float, Field(gt=0)] = 1.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9


class FedAvgM(Strategy):
    name = "fedavgm"
    mean_based = True
    Options = FedAvgMOptions
    opts: FedAvgMOptions

    def __init__(self, opts: FedAvgMOptions | None = None):
        super().__init__(opts)
        self.hb = HeavyBall(self.opts.server_lr, self.opts.momentum)

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        return server_step(updates, global_params, self.hb.step)

    def state(self) -> Params:
        return self.hb.state()

    def load_state(self, state: Params) -> None:
        self.hb.load_state(state)
