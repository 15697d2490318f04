"""Adaptive server optimisers (FedOpt): the shared step of FedAdam, FedYogi and FedAdagrad.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2). The round's
pseudo-gradient is ``delta = avg - G`` (the example-weighted mean of the client models minus the
global model). The server keeps a first moment ``m <- beta_1 * m + (1 - beta_1) * delta`` and a
second moment ``v`` whose update is what tells the three apart (subclasses implement
`second_moment`), then steps ``G' = G + server_lr * m / (sqrt(v) + tau)``. ``m`` starts at 0 and
``v`` at ``tau ** 2``, as in the paper; both are the strategy state, checkpointed per round.
Only trained weights take the step and have moments (apps/kinds.py): BatchNorm's statistics and
counters take the clients' plain weighted mean (`Strategy.statistics`), and are left out of the
rate match below.

Default server learning rate. ``m / sqrt(v)`` has about the same size whatever the size of the
clients' updates, so a fixed ``server_lr`` moves every weight by about that much a round however far
the clients moved: right for one task and ten times too slow or too fast for the next. Reddi et al.
tuned eta per task on a grid of 10^-3..10^1, and no single value fits fedgrid's examples: 0.01 left
the quickstart's FedAdagrad at 0.35 against FedAvg's 0.97, 0.03 costs the breast-cancer example 4
points of AUC (BENCHMARKS.md, the defaults table). So unless the job sets ``server_lr``, round 1
sets it to ``||delta|| / ||m / (sqrt(v) + tau)||``: the rate at which the first server step is exactly
as long as FedAvg's (which steps by delta itself), and kept from then on (it is checkpointed with
the moments). The rule then differs from FedAvg only where it should, in how it rescales each
coordinate as the rounds go on.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from fedgrid.apps.codec import is_float
from fedgrid.apps.kinds import WEIGHT
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, step_toward, weighted_mean

log = logging.getLogger("fedgrid")


class FedOptOptions(StrategyOptions):
    server_lr: Annotated[float, Field(gt=0)] | None = None  # eta; None: matched to FedAvg's first step
    beta_1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta_2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: Annotated[float, Field(gt=0)] = 1e-3  # adaptivity: larger is closer to plain SGD on the server
    # the server rate over the rounds: constant, or cosine annealing (Loshchilov and Hutter, SGDR,
    # ICLR 2017) from server_lr at round 1 toward 0 at round `decay_rounds` (default: the job's rounds;
    # rounds past it, from `fedgrid run --rounds +N`, barely move the model: raise decay_rounds too)
    decay: Literal["none", "cosine"] = "none"
    decay_rounds: Annotated[int, Field(ge=1)] | None = None


class FedOpt(Strategy):
    """Subclasses set `name`, `Options` and `second_moment`."""

    opts: FedOptOptions
    mean_based = True  # a server optimiser step on the mean delta

    def __init__(self, opts: FedOptOptions | None = None):
        super().__init__(opts)
        self.m: Params = OrderedDict()
        self.v: Params = OrderedDict()
        self.lr: float | None = self.opts.server_lr

    @classmethod
    def derive(cls, opts: Any, job: Any) -> None:
        if opts.decay != "none" and opts.decay_rounds is None:
            opts.decay_rounds = job.rounds

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scale(self, rnd: int) -> float:
        """The schedule's factor on the server rate in round `rnd` (a function of the round alone,
        so a resumed run steps as an uninterrupted one)."""
        if self.opts.decay == "none":
            return 1.0
        last = self.opts.decay_rounds or 1
        return 0.5 * (1.0 + math.cos(math.pi * min(max(rnd - 1, 0), last) / last))

    def _update_moments(self, global_params: Params, agg: Params) -> tuple[float, float]:
        """Move ``m`` and ``v`` by this round's pseudo-gradient; returns the squared lengths of the
        unscaled step ``m / (sqrt(v) + tau)`` and of FedAvg's step ``delta``, which the rate match
        needs (summed only while the rate is still unknown)."""
        o, step_sq, delta_sq = self.opts, 0.0, 0.0
        kinds = self.kinds_of(global_params)
        for name, g in global_params.items():
            if kinds[name] != WEIGHT or not is_float(g):
                # (a moment an older checkpoint kept for a statistic is never read again)
                self.m.pop(name, None)
                self.v.pop(name, None)
                continue
            g64 = np.asarray(g, np.float64)
            delta = np.asarray(agg[name], np.float64) - g64
            m = o.beta_1 * self.m.get(name, np.zeros_like(g64)) + (1 - o.beta_1) * delta
            self.m[name] = m
            self.v[name] = v = self.second_moment(self.v.get(name, np.full_like(g64, o.tau**2)), delta * delta)
            if self.lr is None:
                step_sq += float(np.square(m / (np.sqrt(v) + o.tau)).sum())
                delta_sq += float(np.square(delta).sum())
        return step_sq, delta_sq

    def _match_fedavg(self, step_sq: float, delta_sq: float) -> float | None:
        """The rate at which this round's step is as long as FedAvg's (module docstring)."""
        if not (step_sq > 0 and np.isfinite(step_sq) and np.isfinite(delta_sq)):
            return None  # no movement to match: the next round tries again
        lr = float(np.sqrt(delta_sq / step_sq))
        log.info("%s: server_lr %.4g (round 1's step as long as FedAvg's; set strategy.server_lr to fix it)",
                 self.name, lr)
        return lr

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        agg = weighted_mean(updates, global_params)
        lengths = self._update_moments(global_params, agg)
        if self.lr is None:
            self.lr = self._match_fedavg(*lengths)
        lr, tau = (self.lr or 0.0) * self.scale(rnd), self.opts.tau
        return step_toward(global_params, agg,
                           lambda name, g, delta: g + lr * self.m[name] / (np.sqrt(self.v[name]) + tau),
                           self.kinds_of(global_params))

    def state(self) -> Params:
        out = OrderedDict([*((f"m/{k}", a) for k, a in self.m.items()), *((f"v/{k}", a) for k, a in self.v.items())])
        if self.opts.server_lr is None and self.lr is not None:
            out["lr"] = np.array(self.lr, np.float64)  # the matched rate: a resumed run keeps stepping by it
        return out

    def load_state(self, state: Params) -> None:
        self.m = OrderedDict((k[2:], np.asarray(a, np.float64)) for k, a in state.items() if k.startswith("m/"))
        self.v = OrderedDict((k[2:], np.asarray(a, np.float64)) for k, a in state.items() if k.startswith("v/"))
        if self.opts.server_lr is None and "lr" in state:
            self.lr = float(np.asarray(state["lr"]))
