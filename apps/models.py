"""Models: the built-ins (logreg, mlp, cnn) and any ``package.module:factory``.

torch is imported inside the builders, not at module level, so `fedgrid check` and the config
validator can list the names without paying for ``import torch``.
A factory is called as ``factory(input_shape=(C, H, W), num_classes=K, **model.kwargs)``, passing
only the arguments its signature takes (a factory of no arguments is called bare), and must return
a ``torch.nn.Module``.
"""

from __future__ import annotations

import importlib
import math
from collections import OrderedDict
from typing import Any

import numpy as np

BUILTIN = ("logreg", "mlp", "cnn")


def build(name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any] | None = None):
    import torch
    from torch import nn

    kwargs = dict(kwargs or {})
    flat = int(math.prod(input_shape))
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
    if name == "mlp":
        hidden = int(kwargs.get("hidden", 128))
        return nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    if name == "cnn":
        return _cnn(input_shape, num_classes, **kwargs)
    mod, _, attr = name.partition(":")
    factory = getattr(importlib.import_module(mod), attr)
    model = factory(**factory_arguments(factory, tuple(input_shape), num_classes, kwargs))
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model factory {name!r} returned {type(model).__name__}, expected torch.nn.Module")
    return model


def factory_arguments(factory: Any, input_shape: tuple[int, ...], num_classes: int,
                      kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments to call a model factory with: the shapes where its signature takes
    them, and the job's model.kwargs. Raises TypeError (what is wrong) when they cannot bind."""
    import inspect

    sig = inspect.signature(factory)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    args = {k: v for k, v in (("input_shape", input_shape), ("num_classes", num_classes))
            if takes_any or k in sig.parameters}
    args.update(kwargs)
    sig.bind(**args)
    return args


NORMS = ("none", "batch")


def _cnn(input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, int] = (16, 32),
         hidden: int = 64, norm: str = "none"):
    """Two 3x3 conv blocks and two dense layers; ~105k params on 28x28, ~12k on 8x8.

    Padding keeps 8x8 digits usable (8 -> 4 -> 2) as well as 28x28 images (28 -> 14 -> 7).
    ``norm: batch`` puts a BatchNorm2d after each convolution: the built-in model with statistics
    buffers (running mean and variance, a batch counter), which the server rules must average
    rather than step (apps/kinds.py). Only after the convolutions, where each channel has H x W
    values, so a last batch of one example still trains.
    """
    from torch import nn

    if norm not in NORMS:
        raise ValueError(f"model cnn: norm must be one of {list(NORMS)}, got {norm!r}")
    c_in, h, w = (input_shape if len(input_shape) == 3 else (1, *input_shape[-2:]))
    c1, c2 = channels

    def block(c_from: int, c_to: int) -> list[nn.Module]:
        bn = [nn.BatchNorm2d(c_to)] if norm == "batch" else []
        return [nn.Conv2d(c_from, c_to, 3, padding=1), *bn, nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        nn.Unflatten(1, (c_in, h, w)) if len(input_shape) != 3 else nn.Identity(),
        *block(c_in, c1), *block(c1, c2),
        nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )


def get_params(model) -> OrderedDict[str, np.ndarray]:
    """state_dict as numpy, in state_dict order (copies: the model keeps training after this)."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def set_params(model, params: dict[str, np.ndarray]) -> None:
    import torch

    state = model.state_dict()
    if list(state) != list(params):
        raise ValueError(f"parameter names differ from the model's: expected {list(state)}, got {list(params)}")
    with torch.no_grad():
        for k, t in state.items():
            src = torch.from_numpy(np.asarray(params[k]))
            if tuple(src.shape) != tuple(t.shape):
                raise ValueError(f"parameter {k!r}: expected shape {tuple(t.shape)}, got {tuple(src.shape)}")
            t.copy_(src)
