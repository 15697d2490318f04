"""Adaptive server optimisers (FedOpt): the shared step of FedAdam, FedYogi and FedAdagrad.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2). The round's
pseudo-gradient is ``delta = avg - G`` (the example-weighted mean of the client models minus the
global model). The server keeps a first moment ``m <- beta_1 * m + (1 - beta_1) * delta`` and a
second moment ``v`` whose update is what tells the three apart (subclasses implement
`second_moment`), then steps ``G' = G + server_lr * m / (sqrt(v) + tau)``. ``m`` starts at 0 and
``v`` at ``tau ** 2``, as in the paper; both are the strategy state, checkpointed per round.
Integer buffers (BatchNorm counters) take the plain weighted mean.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import numpy as np
from pydantic import Field

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, server_step


class FedOptOptions(StrategyOptions):
    server_lr: Annotated[float, Field(gt=0)] = 0.01  # eta
    beta_1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta_2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: Annotated[float, Field(gt=0)] = 1e-3  # adaptivity: larger is closer to plain SGD on the server


class FedOpt(Strategy):
    """Subclasses set `name`, `Options` and `second_moment`."""

    opts: FedOptOptions
    mean_based = True  # a server optimiser step on the mean delta

    def __init__(self, opts: FedOptOptions | None = None):
        super().__init__(opts)
        self.m: Params = OrderedDict()
        self.v: Params = OrderedDict()

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        o = self.opts

        def step(name: str, g: np.ndarray, delta: np.ndarray) -> np.ndarray:
            m = o.beta_1 * self.m.get(name, np.zeros_like(g)) + (1 - o.beta_1) * delta
            v = self.second_moment(self.v.get(name, np.full_like(g, o.tau**2)), delta * delta)
            self.m[name], self.v[name] = m, v
            return g + o.server_lr * m / (np.sqrt(v) + o.tau)

        return server_step(updates, global_params, step)

    def state(self) -> Params:
        return OrderedDict([*((f"m/{k}", a) for k, a in self.m.items()), *((f"v/{k}", a) for k, a in self.v.items())])

    def load_state(self, state: Params) -> None:
        self.m = OrderedDict((k[2:], np.asarray(a, np.float64)) for k, a in state.items() if k.startswith("m/"))
        self.v = OrderedDict((k[2:], np.asarray(a, np.float64)) for k, a in state.items() if k.startswith("v/"))
