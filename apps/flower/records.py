"""fedgrid's data as Flower's records and back: params, the round's settings, metrics, state.

Names matter on both sides: fedgrid checks an update's names, shapes and dtypes against the global
model, so params travel as an ``ArrayRecord`` keyed by the global model's names (a legacy client
sees the same arrays as a list, in that order). Context.state is kept as Flower's own protobuf
encoding of the ``RecordDict``, so what comes back is exactly what the app left there.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

Params = OrderedDict[str, np.ndarray]

_SCALARS = (bool, int, float, str, bytes)


def to_record(params: dict[str, np.ndarray]) -> Any:
    """Params as an ArrayRecord keyed by their names (a Message API app's ``content["arrays"]``)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in params.items()})


def from_record(record: Any) -> Params:
    """An ArrayRecord's arrays by key, in its order."""
    return OrderedDict((k, np.asarray(a.numpy())) for k, a in record.items())


def initial_arrays(value: Any) -> Params:
    """What ``client.initial`` returned, as params: an ArrayRecord, a torch ``state_dict``, a dict
    of arrays, or a list of arrays (named "0", "1", ... as Flower names them)."""
    from flwr.app import ArrayRecord

    if isinstance(value, ArrayRecord):
        return from_record(value)
    if isinstance(value, list | tuple):
        return OrderedDict((str(i), np.asarray(a)) for i, a in enumerate(value))
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return OrderedDict((k, _numpy(v)) for k, v in value.items())
    raise TypeError(f"returned {type(value).__name__}; expected an ArrayRecord, a torch state_dict, a dict of "
                    "numpy arrays or a list of them")


def _numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        return v.detach().cpu().numpy().copy()
    return np.asarray(v)


def config(settings: Mapping[str, object], rnd: int) -> dict[str, Any]:
    """A ConfigRecord's values for one round: what Flower's strategies send (``server-round``) and
    the job's train settings with the strategy's instructions for this client. Values a
    ConfigRecord cannot hold (None, mappings, mixed lists) stay out."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, _SCALARS):
            out[k] = v
        elif isinstance(v, list | tuple) and v and all(type(x) is type(v[0]) for x in v) \
                and isinstance(v[0], _SCALARS):
            out[k] = list(v)
    out["server-round"] = int(rnd)
    return out


WEIGHT = "num-examples"  # the reply metric Flower's strategies weight by (their weighted_by_key)
STEPS = "num-steps"  # optional: the local steps taken (FedNova normalizes by them; else estimated)
_BAD = re.compile(r"[^A-Za-z0-9_]")


def metrics(values: dict[str, Any], drop_prefix: str) -> dict[str, float]:
    """A reply's numeric metrics under fedgrid's names: ``-`` and other characters as ``_``, and
    the prefix the row adds itself (``train_``, ``eval_``) dropped, so ``train_loss`` stays
    ``train_loss`` in the rounds table rather than ``train_train_loss``. Lists and text stay out."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if k in (WEIGHT, STEPS) or isinstance(v, bool) or not isinstance(v, int | float | np.number):
            continue
        name = _BAD.sub("_", k)
        if name.startswith(drop_prefix) and len(name) > len(drop_prefix):
            name = name[len(drop_prefix):]
        out[name] = float(v)
    return out


def examples(values: dict[str, Any], what: str) -> int:
    """The reply's ``num-examples``: the update's weight, as Flower's strategies read it."""
    n = values.get(WEIGHT)
    if isinstance(n, bool) or not isinstance(n, int | float | np.number) or n <= 0 or int(n) != n:
        raise ValueError(f"the app's {what} reply has metrics[{WEIGHT!r}] = {n!r}; expected the number of "
                         "examples (an int > 0), which weights the update as Flower's strategies do")
    return int(n)


def steps(values: dict[str, Any]) -> int | None:
    """The reply's ``num-steps`` if it reports them; None lets fedgrid estimate them from the job's
    epochs and batch size (what FedNova normalizes by)."""
    n = values.get(STEPS)
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int | float | np.number) or n < 0 or int(n) != n:
        raise ValueError(f"the app's train reply has metrics[{STEPS!r}] = {n!r}; expected the local steps taken "
                         "(an int >= 0)")
    return int(n)


def state_bytes(record_dict: Any) -> np.ndarray:
    """A Context.state as bytes (Flower's protobuf encoding), stored as a uint8 array."""
    from flwr.common.serde import recorddict_to_proto

    return np.frombuffer(recorddict_to_proto(record_dict).SerializeToString(), np.uint8).copy()


def state_from(data: np.ndarray) -> Any:
    """A Context.state back from :func:`state_bytes`."""
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    return recorddict_from_proto(ProtoRecordDict.FromString(np.asarray(data, np.uint8).tobytes()))
