"""What each tensor of the params is, so that only trained weights are ever treated as a gradient.

Params are a flat ``name -> array`` dict (docs/ARCHITECTURE.md, Contracts), but not every tensor in
it is trained. BatchNorm's ``running_mean`` and ``running_var`` are averages of activations the
clients saw, and ``num_batches_tracked`` is a counter: moving them by a server optimiser's step
(Adam's moments, heavy-ball momentum, a server rate other than 1) treats their round-to-round change
as a gradient, which it is not. FedAdam once drove the smallest ``running_var`` of a model from 1.0
to 0.17 in five rounds while the weights were fine (recomputed statistics gave them back their
accuracy). So every tensor has one of four kinds:

- ``weight``: a trainable parameter (``requires_grad``): the server rule applies to it;
- ``stat``: a float buffer, the statistics of what the clients' data looked like (BatchNorm's
  running mean and variance): the clients' example-weighted mean, never a server step;
- ``count``: an integer buffer (``num_batches_tracked``): the same mean, rounded to a whole number;
- ``frozen``: a parameter with ``requires_grad`` False (a LoRA base): nobody trains it, so no server
  step either; it takes the rule's aggregate as it is (which leaves it where it was).

Where kinds come from. The driver works them out once, before round 1, from the initial params
(flow/rounds/prepare.py `build_model`): for the built-in client with `param_kinds` on the model it
builds; for a job's own client from its optional ``param_kinds()`` method (a ``{name: kind}`` for
the tensors it wants to name, typically its buffers), completed by `infer_kinds`. The round loop
gives them to the strategy (``Strategy.kinds``) and to the sites' compression (the task's
``compress["exact"]``: statistics and counters travel whole and exact). Without them (a strategy
used on its own, a site given no list) everything falls back to `infer_kinds` on the params alone.

Runs on both sides and imports torch only inside `param_kinds`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

Kind = Literal["weight", "stat", "count", "frozen"]
KINDS: tuple[str, ...] = ("weight", "stat", "count", "frozen")
WEIGHT, STAT, COUNT, FROZEN = KINDS
# the kinds a round takes as the clients' plain mean (what the data looked like, not a gradient)
BUFFERS = frozenset({STAT, COUNT})
# the last component of a name that marks a statistics buffer when no module says so: torch's
# BatchNorm / InstanceNorm (running_*), Keras's and Flax's BatchNormalization (moving_*), and the
# EMA statistics some normalisation layers keep under these names
STAT_SUFFIXES = ("running_mean", "running_var", "running_std", "moving_mean", "moving_variance", "moving_var",
                 "moving_std")
_LAST = re.compile(r"[^./:]+$")


def _is_float(a: Any) -> bool:
    # (apps/codec.py has the public one and imports this module, so not the other way round)
    return bool(np.issubdtype(np.asarray(a).dtype, np.floating))


def param_kinds(model: Any) -> OrderedDict[str, str]:
    """Each ``state_dict`` entry of a torch module tagged from the module itself, in state_dict
    order: a parameter is ``weight`` if it requires grad else ``frozen``; a buffer is ``stat`` if
    float else ``count``. An entry that is neither (a module's extra state) is inferred by name."""
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    out: OrderedDict[str, str] = OrderedDict()
    for name, value in model.state_dict().items():
        if name in params:
            out[name] = WEIGHT if params[name].requires_grad else FROZEN
        elif name in buffers:
            out[name] = STAT if buffers[name].is_floating_point() else COUNT
        else:
            out[name] = _guess(name, value)
    return out


def infer_kinds(params: Mapping[str, Any], explicit: Mapping[str, str] | None = None) -> OrderedDict[str, str]:
    """Kinds for plain params with no module: an integer (or bool) tensor is a ``count``; a float one
    whose name ends in a statistics suffix (STAT_SUFFIXES) is a ``stat``; the rest are ``weight``.

    ``explicit`` (what a client says of its own tensors) wins over the guess for the names it
    lists. Raises ValueError for a kind not in KINDS, a name the params do not have (a typo would
    otherwise silently leave a buffer to the server step), or an integer tensor called anything
    but a count (a whole-number tensor has no server step to take)."""
    explicit = dict(explicit or {})
    if unknown := sorted(set(explicit) - set(params)):
        raise ValueError(f"param kinds name tensors the params do not have: {unknown[:5]}")
    out: OrderedDict[str, str] = OrderedDict()
    for name, value in params.items():
        kind = explicit.get(name)
        if kind is None:
            out[name] = _guess(name, value)
            continue
        if kind not in KINDS:
            raise ValueError(f"param kind of {name!r} is {kind!r}, expected one of {list(KINDS)}")
        if not _is_float(value) and kind != COUNT:
            raise ValueError(f"param {name!r} is an integer tensor ({np.asarray(value).dtype}): its kind must be "
                             f"'count', not {kind!r}")
        out[name] = kind
    return out


def _guess(name: str, value: Any) -> str:
    if not _is_float(value):
        return COUNT
    last = _LAST.search(name)
    return STAT if last is not None and last.group(0) in STAT_SUFFIXES else WEIGHT


def buffers(kinds: Mapping[str, str]) -> list[str]:
    """The names a round takes as the clients' plain mean (statistics and counters), in order."""
    return [n for n, k in kinds.items() if k in BUFFERS]
