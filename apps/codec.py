"""Update compression: what goes over the wire between a site and the driver.

With ``compression.up`` other than ``none`` a client sends its *delta* ``x - G`` (not its params:
deltas are small and centred on zero, so they quantise and sparsify well), encoded as

- ``fp16``: half precision, 2x fewer bytes;
- ``int8``: one float32 scale per tensor (``max|delta| / 127``) and int8 values, about 4x fewer;
  rounding is stochastic (unbiased), seeded per client and round, so errors average out over
  clients instead of adding up (Alistarh et al., QSGD, 2017, with one level per sign);
- ``topk``: the ``topk_fraction`` largest-magnitude entries of each tensor as (int32 index, float32
  value) pairs. With ``error_feedback`` (the default) what was left out is kept at the site and
  added to the next round's delta (Stich et al., "Sparsified SGD with Memory", 2018), so nothing is
  lost, only delayed. Tensors smaller than ``dense_below`` elements (biases, a small classifier)
  go dense, as in Deep Gradient Compression (Lin et al., ICLR 2018): they cost few bytes, and
  cutting 1% out of a 10-element bias leaves one value.

Statistics buffers and counters (apps/kinds.py: BatchNorm's running mean and variance,
``num_batches_tracked``) always travel whole and exact, as their own values in their own dtype
(``name/value``; counters under ``name``): they are small, are not a delta that errors can be fed
back into, and the driver takes their plain mean, so a sparsified or quantised running variance
would simply be wrong (top-k would leave most of a layer's variances at the old global's). Which
names those are, the driver says (the task's ``compress["exact"]``); without a list they are
inferred from names and dtypes. The payload is a flat dict of numpy arrays (``name``,
``name/scale``, ``name/idx``, ``name/val``, ``name/value``), so it pickles compactly and goes
through the store unchanged when it is too big to ride inline. ``compression.down: fp16``
sends the global model in half precision; clients train from its float32 upcast.

Everything here runs on both sides: `encode` at the site, `decode` on the driver.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

import numpy as np
from numpy.typing import DTypeLike

from fedgrid.apps.kinds import buffers, infer_kinds

Params = dict[str, np.ndarray]
CODECS = ("none", "fp16", "int8", "topk")
# "fp32": a float32 delta, what `none` becomes when the global model went down in fp16 (the driver
# then adds the client's change to its full-precision model, not the client's rounded copy of it)


def is_float(a: np.ndarray) -> bool:
    """A float tensor (weights); the others (BatchNorm counters) are never encoded or averaged as floats."""
    return bool(np.issubdtype(np.asarray(a).dtype, np.floating))


def encode(params: Params, base: Params, codec: str, topk_fraction: float = 0.01,
           residual: Params | None = None, seed: int = 0, dense_below: int = 0,
           exact: Collection[str] | None = None) -> tuple[Params, Params]:
    """The payload for ``params`` trained from ``base``, and the new error-feedback residual
    (top-k only: what was not sent this round, to add next round; empty otherwise). `exact`: the
    statistics and counters, sent as they are (None: inferred, apps/kinds.infer_kinds)."""
    out: Params = OrderedDict()
    left: Params = OrderedDict()
    rng = np.random.default_rng(seed)
    whole = set(exact) if exact is not None else set(buffers(infer_kinds(params)))
    for name, x in params.items():
        x = np.asarray(x)
        if not is_float(x):
            out[name] = x
            continue
        if name in whole:
            out[f"{name}/value"] = x  # the statistic itself: nothing to quantise, nothing to feed back
            continue
        delta = x.astype(np.float32) - np.asarray(base[name], np.float32)
        if codec == "fp32":
            out[name] = delta
        elif codec == "fp16":
            out[name] = delta.astype(np.float16)
        elif codec == "int8":
            scale = float(np.abs(delta).max()) / 127.0
            if scale == 0.0:
                q = np.zeros(delta.shape, np.int8)
            else:
                v = delta / scale  # in [-127, 127]; round up with probability equal to the fraction
                q = np.floor(v + rng.random(v.shape, dtype=np.float32)).clip(-127, 127).astype(np.int8)
            out[name], out[f"{name}/scale"] = q, np.array(scale, np.float32)
        elif codec == "topk" and delta.size < dense_below:
            out[name] = delta  # small: sent whole (a float32 delta), nothing left behind
        elif codec == "topk":
            flat = delta.ravel()
            if residual is not None and name in residual:
                flat = flat + residual[name].ravel()
            k = max(1, int(np.ceil(topk_fraction * flat.size)))
            idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:] if k < flat.size \
                else np.arange(flat.size)
            idx = np.sort(idx).astype(np.int32)
            out[f"{name}/idx"], out[f"{name}/val"] = idx, flat[idx].astype(np.float32)
            if residual is not None:
                rest = flat.copy()
                rest[idx] = 0.0
                left[name] = rest.reshape(delta.shape)
        else:
            raise ValueError(f"compression.up: expected one of {CODECS}, got {codec!r}")
    return out, left


def decode(payload: Params, base: Params, codec: str) -> Params:
    """The client's params again: ``base + delta`` in the base's dtype (non-float tensors as sent,
    statistics sent whole as ``name/value`` taken as they are). Raises ValueError for a payload
    that does not fit the base (a missing or misshapen tensor)."""
    out: Params = OrderedDict()
    for name, g in base.items():
        g = np.asarray(g)
        if not is_float(g):
            if name not in payload:
                raise ValueError(f"compressed update lacks tensor {name!r}")
            out[name] = np.asarray(payload[name])
            continue
        if f"{name}/value" in payload:
            value = np.asarray(payload[f"{name}/value"])
            if value.size != g.size:
                raise ValueError(f"compressed update: {name!r} has {value.size} values, the model {g.size}")
            out[name] = value.reshape(g.shape).astype(g.dtype, copy=False)
            continue
        try:
            if codec in ("fp16", "fp32") or (codec == "topk" and name in payload):
                delta = np.asarray(payload[name], np.float32)
            elif codec == "int8":
                delta = np.asarray(payload[name], np.float32) * np.float32(payload[f"{name}/scale"])
            elif codec == "topk":
                delta = np.zeros(g.size, np.float32)
                idx = np.asarray(payload[f"{name}/idx"])
                if idx.size and (idx.min() < 0 or idx.max() >= g.size):
                    raise ValueError(f"compressed update: index out of range in {name!r}")
                delta[idx] = payload[f"{name}/val"]
            else:
                raise ValueError(f"unknown codec {codec!r}")
        except KeyError as e:
            raise ValueError(f"compressed update lacks {e.args[0]!r}") from None
        if delta.size != g.size:
            raise ValueError(f"compressed update: {name!r} has {delta.size} values, the model {g.size}")
        out[name] = (g.astype(np.float32) + delta.reshape(g.shape)).astype(g.dtype)
    return out


def nbytes(payload: Params) -> int:
    return int(sum(np.asarray(a).nbytes for a in payload.values()))


def down(params: Params, codec: str) -> Params:
    """The global model as sent to clients: float tensors in float16 with ``compression.down: fp16``."""
    if codec != "fp16":
        return params
    return OrderedDict((k, v.astype(np.float16) if is_float(v) else v) for k, v in params.items())


def up_from_down(params: Params, like_dtype: DTypeLike = np.float32) -> Params:
    """A half-precision global model back in float32 at the client (others unchanged)."""
    return OrderedDict((k, v.astype(like_dtype) if is_float(v) and v.dtype == np.float16 else v)
                       for k, v in params.items())
