"""Personalization and client state, driver side: which params are personal, what a task says
about them, and the server's rule for them.

A personal layer (``personal.layers``: FedBN's normalization layers, FedPer's head) is trained at
its client and kept in the client's state at the site (apps/sitestate.py). What a client sends
has the global model's values there, and the server keeps the global values as they were (round
0's, what a client starts from before it has its own), so a personal layer is never averaged,
never moved by a server optimizer, never noised into the global model. Ditto's personal model is
kept the same way, whole. The driver never sees either: it records only each client's state
version (flow/clients/profiles.py).
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from typing import Any

import numpy as np

from fedgrid.flow.config import ConfigError, Job
from fedgrid.flow.config.views import strategy_of
from fedgrid.flow.strategies import STRATEGIES

NORM_TYPES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "RMSNorm")
# names of normalization params when no torch module is at hand (a client's own init_params)
NORM_HINTS = ("bn", "norm", "running_mean", "running_var", "num_batches_tracked")


def norm_names(model: Any) -> list[str]:
    """The state_dict names that belong to a torch module's normalization layers (their weights,
    biases, running statistics and counters): what FedBN keeps local."""
    out = []
    for prefix, mod in model.named_modules():
        if any(t in type(mod).__name__ for t in NORM_TYPES):
            base = f"{prefix}." if prefix else ""
            out += [base + n for n, _ in mod.named_parameters(recurse=False)]
            out += [base + n for n, _ in mod.named_buffers(recurse=False)]
    return out


def _hinted(name: str) -> bool:
    """A normalization param by its name alone: a part such as ``bn1``, ``norm``, ``ln_f``'s ``ln``,
    ``layernorm``, or a running statistic (not ``normal`` or ``bneck``)."""
    parts = name.lower().replace("_", ".").split(".")
    return any(h in name.lower() for h in NORM_HINTS[2:]) or any(
        re.fullmatch(r"(bn|norm|ln|gn)\d*", p) or p.endswith("norm") for p in parts)


def names(job: Job, params: dict[str, np.ndarray], model: Any | None) -> list[str]:
    """The personal params of a job, in the model's order (ConfigError for a pattern that
    matches nothing: a typo would otherwise silently share the layer)."""
    spec = job.personal
    if spec is None or not spec.layers:
        return []
    chosen: set[str] = set()
    for pat in spec.layers:
        if pat == "norm":
            got = set(norm_names(model)) if model is not None else {n for n in params if _hinted(n)}
        else:
            got = {n for n in params if fnmatch.fnmatchcase(n, pat)}
        if not got:
            raise ConfigError("<job>", "personal.layers", f"{pat!r} matches none of the model's params "
                              f"({', '.join(list(params)[:6])}, ...)")
        chosen |= got
    if chosen == set(params):
        raise ConfigError("<job>", "personal.layers", "every param would be personal: nothing left to federate")
    return [n for n in params if n in chosen]


def keep_options(job: Job, stateful: bool, personal: list[str]) -> dict[str, Any] | None:
    """What every task says about client state (None: the run keeps none)."""
    ditto = job.personal.ditto if job.personal is not None else None
    # SCAFFOLD's variates and top-k's residuals are per-client state too, kept the same way
    fedgrid_own = STRATEGIES[strategy_of(job).name].needs_store or job.compression.needs_store()
    if not (stateful or personal or ditto or fedgrid_own):
        return None
    return {"personal": list(personal), "ditto": ditto.model_dump() if ditto else None,
            "head_epochs": job.personal.head_epochs if job.personal is not None else 0}


def hold(before: dict[str, np.ndarray], after: dict[str, np.ndarray], personal: list[str]) -> dict[str, np.ndarray]:
    """The server's params after a round: personal layers keep the global values they had."""
    if not personal:
        return after
    return OrderedDict((n, before[n] if n in personal else a) for n, a in after.items())
