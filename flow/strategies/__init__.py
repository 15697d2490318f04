"""Aggregation strategies, one class a file (as Flower's serverapp/strategy).

Each strategy declares its job-file options as a pydantic ``Options`` class; the job schema's
``strategy:`` block is the union of them, discriminated by ``name``.
"""

from __future__ import annotations

from typing import get_args

from fedgrid.flow.strategies.base import Strategy, StrategyOptions
from fedgrid.flow.strategies.fedadagrad import FedAdagrad
from fedgrid.flow.strategies.fedadam import FedAdam
from fedgrid.flow.strategies.fedavg import FedAvg
from fedgrid.flow.strategies.fedavgm import FedAvgM
from fedgrid.flow.strategies.fedbuff import FedBuff
from fedgrid.flow.strategies.fednova import FedNova
from fedgrid.flow.strategies.fedprox import FedProx
from fedgrid.flow.strategies.fedyogi import FedYogi
from fedgrid.flow.strategies.krum import Krum
from fedgrid.flow.strategies.median import Median
from fedgrid.flow.strategies.scaffold import Scaffold
from fedgrid.flow.strategies.trimmed_mean import TrimmedMean

_CLASSES: tuple[type[Strategy], ...] = (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, Scaffold, FedNova,
                                        Median, TrimmedMean, Krum, FedBuff)
# every name a strategy answers to (Krum's Options also takes "multikrum")
STRATEGIES: dict[str, type[Strategy]] = {
    n: cls for cls in _CLASSES for n in get_args(cls.Options.model_fields["name"].annotation)}


def option_models() -> list[type[StrategyOptions]]:
    return [cls.Options for cls in _CLASSES]


def make_strategy(spec: StrategyOptions) -> Strategy:
    return STRATEGIES[spec.name](spec)  # type: ignore[attr-defined]
