"""Client state as data: what a client keeps between rounds, turned into one store object and back.

A client's state (``Client.get_state()``: an optimizer's ``state_dict``, a scheduler's, a numpy
RNG's ``bit_generator.state``, counters, personal layers) is a tree of dicts, lists and tuples
whose leaves are arrays (numpy arrays, numpy scalars or torch tensors) or JSON values (numbers,
strings, booleans, None). It is stored as a fedgrid params object (:mod:`fedgrid.apps.store`):
each array one entry, and the tree's shape one JSON entry in which each array is a marker. Nothing
is pickled, so loading a state never runs code, whoever wrote the store; anything that is not
data (an object, a function, bytes) is refused by name when the state is saved.

Torch tensors come back as torch tensors (CPU), so ``optimizer.load_state_dict(state["opt"])``
takes what ``optimizer.state_dict()`` gave; integer dict keys (an optimizer's per-parameter state)
come back as integers.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

import numpy as np

Arrays = OrderedDict[str, np.ndarray]

TREE = "__tree__"  # the entry holding the tree's JSON (uint8)
MARK = "__fg__"  # the key of a marker object inside that JSON
MAX_JSON = 64 << 20  # a state's JSON part: counters and settings, not data (arrays go as arrays)


class StateError(TypeError):
    """A client state that is not data; names where in the tree and what was found."""


def _torch_tensor(v: Any) -> bool:
    mod = type(v).__module__
    return mod.startswith("torch") and hasattr(v, "detach") and hasattr(v, "numpy")


def encode(tree: Any) -> Arrays:
    """The state as a store object's arrays: one entry per array leaf, plus the tree (JSON)."""
    arrays: Arrays = OrderedDict()
    skeleton = _enc(tree, "", arrays)
    text = json.dumps(skeleton, allow_nan=True, separators=(",", ":")).encode()
    if len(text) > MAX_JSON:
        raise StateError(f"client state: {len(text) >> 20} MB of plain values; keep large data in arrays")
    arrays[TREE] = np.frombuffer(text, np.uint8).copy()
    return arrays


def _enc(v: Any, path: str, arrays: Arrays) -> Any:
    """One node: JSON as it is, arrays replaced by markers, containers walked."""
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v if not isinstance(v, float) or math.isfinite(v) else {MARK: "float", "v": repr(v)}
    if isinstance(v, np.ndarray | np.generic) or _torch_tensor(v):
        torch = _torch_tensor(v)
        a = v.detach().cpu().numpy() if torch else np.asarray(v)
        if a.dtype.hasobject:
            raise StateError(f"client state at {path or '/'!r}: an array of Python objects is not data")
        name = f"a{len(arrays)}"
        arrays[name] = np.array(a, copy=True)  # the client may change its own arrays after saving
        return {MARK: "array", "name": name, "torch": torch, "scalar": isinstance(v, np.generic)}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v) and MARK not in v:
            return {k: _enc(x, f"{path}/{k}", arrays) for k, x in v.items()}
        for k in v:
            if not (k is None or isinstance(k, bool | int | float | str)):
                raise StateError(f"client state at {path or '/'!r}: key {k!r} is a {type(k).__name__}, "
                                 "expected a string or a number")
        return {MARK: "dict", "items": [[k, _enc(x, f"{path}/{k}", arrays)] for k, x in v.items()]}
    if isinstance(v, list | tuple):
        items = [_enc(x, f"{path}/{i}", arrays) for i, x in enumerate(v)]
        return {MARK: "tuple", "items": items} if isinstance(v, tuple) else items
    raise StateError(f"client state at {path or '/'!r}: a {type(v).__module__}.{type(v).__name__} is not data "
                     "(expected arrays, numbers, strings, booleans, None, and dicts, lists or tuples of them)")


def decode(arrays: dict[str, np.ndarray]) -> Any:
    """The tree :func:`encode` was given, from a store object's arrays."""
    if TREE not in arrays:
        raise StateError("not a client state object (no tree entry)")
    skeleton = json.loads(bytes(np.asarray(arrays[TREE], np.uint8)).decode())
    return _dec(skeleton, arrays)


def _dec(v: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(v, list):
        return [_dec(x, arrays) for x in v]
    if not isinstance(v, dict):
        return v
    kind = v.get(MARK)
    if kind is None:
        return {k: _dec(x, arrays) for k, x in v.items()}
    if kind == "array":
        a = np.array(arrays[v["name"]], copy=True)  # writeable: the client may train it in place
        if v.get("torch"):
            import torch

            return torch.from_numpy(a)
        return a[()] if v.get("scalar") else a
    if kind == "float":
        return float(v["v"])
    if kind == "tuple":
        return tuple(_dec(x, arrays) for x in v["items"])
    if kind == "dict":
        return {k: _dec(x, arrays) for k, x in v["items"]}
    raise StateError(f"not a client state object (marker {str(kind)[:20]!r})")
