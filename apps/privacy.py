"""Clipping and Gaussian noise on a model update: the primitive of client-level DP.

Runs at a site (local DP: the noise is added before the update leaves) and on the driver
(central DP: a trusted aggregator clips and noises what it received). The update's *delta* from
the global model is clipped to L2 norm ``clip`` over all float tensors together -- one bound per
client, which is what client-level DP needs (McMahan et al., "Learning Differentially Private
Recurrent Language Models", ICLR 2018) -- then ``N(0, std^2)`` is added to every coordinate.
"All float tensors" includes statistics buffers (BatchNorm's running mean and variance,
apps/kinds.py) on purpose: they are averages of the client's data, so they leave the site under
the same bound and noise as the weights. Integer counters are not clipped or noised: they tell
how many batches the client ran, which its update's example count already does.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from fedgrid.apps.codec import is_float

Params = dict[str, np.ndarray]


def _deltas(params: Params, base: Params) -> dict[str, np.ndarray]:
    """``params - base`` in float64 for every float tensor the base has."""
    return {k: np.asarray(v, np.float64) - np.asarray(base[k], np.float64) for k, v in params.items()
            if k in base and is_float(np.asarray(v))}


def _norm(deltas: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.dot(d.ravel(), d.ravel())) for d in deltas.values())))


def delta_norm(params: Params, base: Params) -> float:
    """The L2 norm of ``params - base`` over all float tensors together."""
    return _norm(_deltas(params, base))


def clip_and_noise(params: Params, base: Params, clip: float, std: float,
                   rng: np.random.Generator) -> tuple[Params, float]:
    """``base + clip(params - base, clip) + N(0, std^2)`` per float tensor (others unchanged),
    and the delta's norm before clipping."""
    deltas = _deltas(params, base)
    norm = _norm(deltas)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    out: Params = OrderedDict()
    for k, v in params.items():
        if k not in deltas:
            out[k] = v
            continue
        d = deltas[k] * factor
        if std > 0:
            d = d + rng.normal(0.0, std, size=d.shape)
        out[k] = (np.asarray(base[k], np.float64) + d).astype(np.asarray(v).dtype)
    return out, norm
