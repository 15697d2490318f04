"""What the robust rules (median, trimmed mean, Krum) share: bucketing and a server step.

Bucketing -- Karimireddy, He and Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing", ICLR 2022. Coordinate-wise median, trimmed mean and Krum assume honest updates agree;
under non-IID data they do not, and the robust rule throws away the minority view of every honest
client (a class only two clients hold barely moves a median of twenty). Averaging buckets of ``s``
randomly grouped updates first shrinks the spread between the inputs by about ``s`` while a bad
update still spoils at most one bucket, so the rule keeps its guarantee as long as the bad
*buckets* stay a minority (s = 2 for 20% bad clients). The grouping is drawn from the round number
and the clients' ids, never from arrival order, so a resumed round groups the same way and
aggregates to the same bytes.

Server momentum -- Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021, show robust rules lose most where their output is noisy and biased from
round to round, and that momentum over rounds repairs much of it. A robust rule's output is
treated as the round's aggregate and the server takes a heavy-ball step toward it (``server_lr``,
``momentum``; the defaults 1 and 0 are the rule alone). A bad client still moves each round's
aggregate no further than the rule allows, so momentum adds no new way in.

Statistics buffers (apps/kinds.py: BatchNorm's running mean and variance, its counter) take the
rule's own value with no server step: the coordinate-wise median or trimmed mean of the clients'
statistics, and for Krum their median too (they never enter Krum's distances, which compare the
trained weights). Not their plain mean, as the other rules take: one hostile client would then
set every BatchNorm layer's statistics (a running variance of -1e6 turns every activation into
NaN) however robust the rule is on the weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import numpy as np
from pydantic import Field

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import HeavyBall, Params, Strategy, StrategyOptions, weighted_mean


class RobustOptions(StrategyOptions):
    """Options every robust rule shares."""

    bucket: Annotated[int, Field(ge=1)] = 1  # s: updates averaged per bucket before the rule (1: off)
    server_lr: Annotated[float, Field(gt=0)] = 1.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0


class RobustStrategy(Strategy):
    """Bucket the updates, let the subclass's `combine` pick the aggregate, step toward it."""

    opts: RobustOptions

    def __init__(self, opts: RobustOptions | None = None):
        super().__init__(opts)
        self.hb = HeavyBall(self.opts.server_lr, self.opts.momentum)

    def combine(self, rnd: int, global_params: Params, updates: list[ClientUpdate]) -> Params:
        raise NotImplementedError

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        if not updates:
            raise ValueError("cannot aggregate zero updates")
        return self.hb.apply(global_params, self.combine(rnd, global_params,
                                                         bucketed(updates, self.opts.bucket, rnd)),
                             self.kinds_of(global_params))

    def statistics(self, global_params: Params, updates: list[ClientUpdate], out: Params,
                   names: list[str]) -> Params:
        """The rule's own value, which the server step left as it was (module docstring)."""
        return OrderedDict((n, out[n]) for n in names)

    def state(self) -> Params:
        return self.hb.state()

    def load_state(self, state: Params) -> None:
        self.hb.load_state(state)


def bucketed(updates: list[ClientUpdate], size: int, rnd: int) -> list[ClientUpdate]:
    """The round's updates averaged in random groups of ``size`` (example-weighted within a group).

    Returns the updates unchanged for size 1; the last bucket is smaller when ``size`` does not
    divide the count.
    """
    if size <= 1 or len(updates) <= 1:
        return updates
    ordered = sorted(updates, key=lambda u: (u.client, u.round))
    rng = np.random.default_rng([rnd, *(u.client for u in ordered)])
    order = rng.permutation(len(ordered))
    out = []
    for s in range(0, len(order), size):
        group = [ordered[i] for i in order[s:s + size]]
        out.append(ClientUpdate(client=min(u.client for u in group), site="bucket", round=rnd,
                                num_examples=int(sum(u.num_examples for u in group)),
                                params=weighted_mean(group, group[0].params)))
    return out
