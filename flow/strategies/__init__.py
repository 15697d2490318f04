"""Aggregation strategies, one class a file (as Flower's serverapp/strategy).

Each strategy declares its job-file options as a pydantic ``Options`` class; the job schema's
``strategy:`` block is the union of them, discriminated by ``name``.
"""

from __future__ import annotations

from fedgrid.flow.strategies.base import Strategy, StrategyOptions
from fedgrid.flow.strategies.fedavg import FedAvg
from fedgrid.flow.strategies.fedbuff import FedBuff
from fedgrid.flow.strategies.fednova import FedNova

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (FedAvg, FedNova, FedBuff)}


def option_models() -> list[type[StrategyOptions]]:
    return [s.Options for s in STRATEGIES.values()]


def make_strategy(spec: StrategyOptions) -> Strategy:
    return STRATEGIES[spec.name](spec)  # type: ignore[attr-defined]
