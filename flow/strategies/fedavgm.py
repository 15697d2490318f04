"""FedAvgM: FedAvg with server momentum.

Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", 2019. The server treats ``G - avg`` (the round's pseudo-gradient) as a gradient
and takes a heavy-ball step: ``v <- momentum * v + (G - avg)``, ``G' = G - server_lr * v``. Under
non-IID data the momentum smooths the round-to-round swings that come from each round seeing a
different mix of classes. With momentum 0 and server_lr 1 it is exactly FedAvg. The velocity ``v``
is the strategy state, so it is checkpointed and a resumed run takes the same next step. Only
trained weights take the step and keep a velocity; BatchNorm's statistics and counters take the
clients' plain weighted mean (apps/kinds.py).

Default momentum. Hsu et al. read server momentum through its effective step
``server_lr / (1 - momentum)``: 10 at the paper's 0.9, which suits long runs over clients that run
plain SGD (Fashion-MNIST, Dirichlet 0.1, 30 rounds of one SGD epoch: +1.6 points over FedAvg,
BENCHMARKS.md). Two things make it overshoot. Clients that themselves use heavy-ball momentum
``mu`` already move up to ``1 / (1 - mu)`` times further per round than plain SGD would: the
quickstart (client momentum 0.9, 5 epochs) ended at 0.708 against FedAvg's 0.975. And the velocity
averages over about ``1 / (1 - momentum)`` rounds, 10 at 0.9, so a job of 10 or 20 rounds spends
its whole length swinging (the rehearse job, 10 rounds with half the clients each: 0.758 against
FedAvg's 0.838). SlowMo (Wang et al., "SlowMo: Improving Communication-Efficient Distributed SGD
with Slow Momentum", ICLR 2020), the same server step over workers that run momentum SGD, uses a
slow learning rate of 1 with a lower slow momentum. So when ``momentum`` is not set it is 0.9
over plain-SGD clients in jobs of at least 30 rounds (three of its horizons), and 0.5 (effective
step 2, a horizon of 2 rounds) otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import HeavyBall, Params, Strategy, StrategyOptions, weighted_mean


class FedAvgMOptions(StrategyOptions):
    name: Literal["fedavgm"] = "fedavgm"
    server_lr: Annotated[float, Field(gt=0)] = 1.0
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None  # None: from the clients' momentum (above)


LONG = 30  # rounds: three horizons of momentum 0.9


def server_momentum(client_momentum: float, rounds: int = LONG) -> float:
    """The default server momentum for clients with this heavy-ball momentum in a job of this many
    rounds (module docstring)."""
    return 0.9 if client_momentum == 0 and rounds >= LONG else 0.5


class FedAvgM(Strategy):
    name = "fedavgm"
    mean_based = True
    Options = FedAvgMOptions
    opts: FedAvgMOptions

    @classmethod
    def derive(cls, opts: Any, job: Any) -> None:
        if opts.momentum is None:
            opts.momentum = server_momentum(job.train.momentum, job.rounds)

    def __init__(self, opts: FedAvgMOptions | None = None):
        super().__init__(opts)
        momentum = self.opts.momentum if self.opts.momentum is not None else server_momentum(0.0)
        self.hb = HeavyBall(self.opts.server_lr, momentum)

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        return self.hb.apply(global_params, weighted_mean(updates, global_params), self.kinds_of(global_params))

    def state(self) -> Params:
        return self.hb.state()

    def load_state(self, state: Params) -> None:
        self.hb.load_state(state)
