"""Parsl's import in a site's own processes, without the client libraries they never talk to.

Importing any part of Parsl imports its Kubernetes provider and its Globus Compute executor, which
import the ``kubernetes`` and ``globus_compute_sdk`` clients when they are installed (about 0.7 s
of CPU together). An interchange, a worker pool and the process its workers fork from pay that at
every site's start, in series with everything else on the node, and use neither. Told that the
clients are not installed (``None`` in ``sys.modules``: their import raises ImportError), Parsl
skips them, as it does on a machine without them.

Cheap to import (nothing but the standard library), so the interchange's guard and the pool's
start, which run from their files to stay lean, can use it. The driver's equivalent, which depends
on the job's site kinds, is :func:`fedgrid.executors.spare_imports`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

CLIENTS = ("kubernetes", "globus_compute_sdk")


def spare(names: Iterable[str] = CLIENTS) -> list[str]:
    """For a process that imports Parsl and never user code: the clients (or those of `names`)
    stay away for good. Returns those spared (not those already imported)."""
    spared = [m for m in names if m not in sys.modules]
    for m in spared:
        sys.modules[m] = None  # type: ignore[assignment]
    return spared


def restore() -> None:
    """The clients can be imported again: for the process workers fork from, whose client code may
    use one of them itself (Parsl, already imported, keeps what it found)."""
    for m in CLIENTS:
        if m in sys.modules and sys.modules[m] is None:
            del sys.modules[m]
