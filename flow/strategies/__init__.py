"""Aggregation strategies, one class a file (as Flower's serverapp/strategy)."""

from __future__ import annotations

from typing import Any

from fedgrid.flow.strategies.base import Strategy
from fedgrid.flow.strategies.fedavg import FedAvg
from fedgrid.flow.strategies.fednova import FedNova

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fednova": FedNova}


def make_strategy(spec: Any) -> Strategy:
    opts = spec.model_dump()
    return STRATEGIES[opts.pop("name")](**opts)
