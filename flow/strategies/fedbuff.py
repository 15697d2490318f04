"""FedBuff: buffered asynchronous aggregation with staleness weighting.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022. There
are no rounds to wait for: every site keeps its workers busy with clients, each training from the
newest global model it can get, and the server folds updates into a buffer. When `buffer_size`
updates have arrived it takes one server step,
``G' = G + server_lr * sum_i n_i w(s_i) delta_i / sum_i n_i``, with ``delta_i`` the client's change
from the model it started from, ``s_i`` its staleness (server steps since that model) and
``w(s) = (1 + s) ** -staleness_exponent``. Stale updates thus move the model less, and updates
staler than `max_staleness` are discarded. Each server step is checkpointed as one "round".

The asynchronous loop (flow/rounds/asynchronous.py) turns each update into its delta before it reaches
`aggregate`, so this file is only the server rule.

Statistics buffers and counters (apps/kinds.py) move by the buffer's example- and staleness-weighted
mean change (`statistics`): no ``server_lr``, and normalised by the weights themselves, so stale
updates do not shrink a running variance toward the old model's; counters stay whole.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, cast_like, weighted_sum


class FedBuffOptions(StrategyOptions):
    name: Literal["fedbuff"] = "fedbuff"
    buffer_size: Annotated[int, Field(ge=1)] = 5  # updates per server step (the paper's K)
    server_lr: Annotated[float, Field(gt=0)] = 1.0  # eta_g
    staleness_exponent: Annotated[float, Field(ge=0)] = 0.5  # w(s) = (1 + s) ** -exponent
    max_staleness: Annotated[int, Field(ge=0)] = 10  # older updates are discarded
    per_worker: Annotated[int, Field(ge=1)] = 1  # clients in flight per site worker


class FedBuff(Strategy):
    name = "fedbuff"
    Options = FedBuffOptions
    asynchronous = True
    opts: FedBuffOptions

    @classmethod
    def advice(cls, job: Any) -> list[tuple[str, str]]:
        """`rounds` counts server steps, and a step takes only `buffer_size` updates: a job written
        for synchronous rounds trains on far fewer updates under FedBuff (Fashion-MNIST: 50
        instead of 200, 2 points below FedAvg after its 10 rounds)."""
        k, per_round = job.strategy.buffer_size, job.clients_per_round()
        if k >= per_round:
            return []
        return [("rounds", f"fedbuff counts a server step of strategy.buffer_size ({k}) updates as a round, so "
                 f"rounds: {job.rounds} trains on {job.rounds * k} client updates where synchronous rounds of "
                 f"{per_round} clients train on {job.rounds * per_round}; for as much training set rounds: "
                 f"{-(-job.rounds * per_round // k)} (or a larger buffer_size)")]

    def weight(self, staleness: int) -> float:
        return (1.0 + staleness) ** -self.opts.staleness_exponent

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        """`updates` carry deltas (new - the global each started from) and their staleness `scale`."""
        if not updates:
            raise ValueError("cannot aggregate zero updates")
        n = float(sum(u.num_examples for u in updates))
        if n <= 0:
            raise ValueError("updates carry zero examples in total")
        w = np.array([u.num_examples * u.scale / n for u in updates])
        out: Params = OrderedDict()
        for name, g in global_params.items():
            step = weighted_sum([u.params[name] for u in updates], w)
            new = np.asarray(g, dtype=np.float64) + self.opts.server_lr * step
            out[name] = cast_like(new, g)
        return out

    def statistics(self, global_params: Params, updates: list[ClientUpdate], out: Params,
                   names: list[str]) -> Params:
        """G plus the weighted mean of the buffer's changes (module docstring): the updates here
        are deltas, which the default plain mean of params would misread."""
        w = np.array([u.num_examples * u.scale for u in updates], np.float64)
        w = w / w.sum()
        return OrderedDict((n, cast_like(np.asarray(global_params[n], np.float64)
                                         + weighted_sum([u.params[n] for u in updates], w), global_params[n]))
                           for n in names)
