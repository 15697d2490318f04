"""The value made for the last arguments seen, kept while the same objects come again.

The clients of a cohort task (apps/cohort.py) share one data block and one options dict: the
objects unpickled once for the whole cohort. Work derived only from them (their JSON, a hash of
it) is then the same for every client of the cohort, and at thousands of clients a round it is
worth doing once. Objects are compared by identity (a held reference keeps an id from being
reused), small values by equality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Last:
    """One remembered call: ``get(same, equal, make)`` returns what `make()` gave the last time
    the objects in `same` were these very objects and the values in `equal` were equal."""

    def __init__(self) -> None:
        self._last: tuple | None = None  # (same, equal, value): one tuple, so a reader sees one call's

    def get(self, same: tuple, equal: tuple, make: Callable[[], Any]) -> Any:
        last = self._last
        if last is not None and len(last[0]) == len(same) and all(a is b for a, b in zip(last[0], same, strict=True)) \
                and last[1] == equal:
            return last[2]
        value = make()
        self._last = (same, equal, value)
        return value
