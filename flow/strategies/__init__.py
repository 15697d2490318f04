"""Aggregation strategies, one class a file (as Flower's serverapp/strategy).

Each strategy declares its job-file options as a pydantic ``Options`` class; the job schema's
``strategy:`` block is the union of them, discriminated by ``name``. Every module of this package
that defines a Strategy with its own ``Options`` is found here, so a new strategy is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import get_args

from fedgrid.flow.strategies.base import Strategy, StrategyOptions

DEFAULT = "fedavg"  # a job without a strategy block; listed first in messages


def _discover() -> tuple[type[Strategy], ...]:
    found = []
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{__name__}.{m.name}")
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, Strategy) and obj.__module__ == mod.__name__
                    and "Options" in vars(obj) and "name" in obj.Options.model_fields):
                found.append(obj)
    return tuple(sorted(found, key=lambda c: (c.name != DEFAULT, c.name)))


_CLASSES = _discover()
# every name a strategy answers to (Krum's Options also takes "multikrum")
STRATEGIES: dict[str, type[Strategy]] = {
    n: cls for cls in _CLASSES for n in get_args(cls.Options.model_fields["name"].annotation)}


def option_models() -> list[type[StrategyOptions]]:
    return [cls.Options for cls in _CLASSES]


def make_strategy(spec: StrategyOptions) -> Strategy:
    return STRATEGIES[spec.name](spec)  # type: ignore[attr-defined]


def mean_based() -> list[str]:
    """Names of the strategies that take the clients' example-weighted mean (central DP, secagg)."""
    return [n for n, cls in STRATEGIES.items() if cls.mean_based]
