"""How fedgrid's records cross Parsl's serializer cheaply, in both directions.

Parsl serializes every app argument and every result with dill, whose pickler is pickle's
pure-Python implementation: a TrainTask of a 1.3k-param model takes ~0.35 ms to serialize that
way and a ClientUpdate ~0.25 ms, against ~25 and ~13 µs with the C pickler. At thousands of
clients a round that is most of what the driver (and each worker) spends per client
(bench/overhead.py). So the records reduce themselves to one C-pickled bytes string: dill then
only copies bytes, and the other side gets the record itself, never a wrapper. What the C pickler
cannot carry (a user's option holding a lambda, say) falls back to dill as before.
"""

from __future__ import annotations

import pickle
from typing import Any, TypeVar

PROTOCOL = pickle.HIGHEST_PROTOCOL
R = TypeVar("R")  # a record class


def same(obj: Any) -> Any:
    """The fallback's rebuild: the object as dill carried it."""
    return obj


class Packed:
    """An app argument carried as C-pickled bytes: `pickle.loads` at the worker returns the
    argument itself, so the app never sees this wrapper. Only for executors that serialize their
    arguments; a site that runs apps in the driver's threads would get the wrapper."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __reduce__(self) -> tuple:
        try:
            return pickle.loads, (pickle.dumps(self.obj, protocol=PROTOCOL),)
        except Exception:  # noqa: BLE001 - not C-picklable: let dill carry it as it is
            return same, (self.obj,)


def rebuild(cls: type[R], state: bytes | dict[str, Any]) -> R:
    """A record from its fields (C-pickled bytes, or a dict when it fell back to dill)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(pickle.loads(state) if isinstance(state, bytes) else state)
    return obj


class FastPickle:
    """Mixin for a dataclass record a worker sends back: its fields go as one C-pickled string."""

    def __reduce__(self) -> tuple:
        try:
            return rebuild, (type(self), pickle.dumps(self.__dict__, protocol=PROTOCOL))
        except Exception:  # noqa: BLE001 - something only dill can carry
            return rebuild, (type(self), dict(self.__dict__))
