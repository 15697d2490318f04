"""Every use of Parsl beyond its public API, in one place.

fedgrid leans on a few of Parsl's internals where its public API has no equivalent: a batch
block's last known state and holding every manager of a block (walltime drains,
flow/rounds/blocks.py), the Slurm provider's squeue command line (final states of ended jobs),
Parsl's address discovery and scheduler commands during a dry run (``fedgrid check``), and the
worker pool's and interchange's modules and multiprocessing context (executors/pool_start.py,
executors/ic_guard.py, which run from their files and cannot import this package, so they repeat
the names below; tests/unit/test_parsl_api.py checks that both agree). Each is named here, and
tests/unit/test_parsl_api.py fails when the installed Parsl no longer has one in the shape used,
which is what the upper bound of the ``parsl`` pin in pyproject.toml is raised against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"  # run by executors/pool_start.py
INTERCHANGE_MODULE = "parsl.executors.high_throughput.interchange"  # run by executors/ic_guard.py
POOL_CONTEXT = ("parsl.multiprocessing", "SpawnContext")  # the pool module's `from ... import`, replaced
ADDRESS_DISCOVERY = "parsl.executors.high_throughput.executor.get_all_addresses"


def block_state(executor: Any, block: str) -> str | None:
    """The name of the last state Parsl's job status poller recorded for `block` (``SCALED_IN``
    when Parsl ended it itself), or None when it has none."""
    status = getattr(executor, "_status", {}).get(block)
    return None if status is None else getattr(status.state, "name", None)


def hold_block(executor: Any, block: str) -> None:
    """Stop sending tasks to every manager of `block` (an HTEX's), which then finishes what it has."""
    executor._hold_block(block)


def squeue_all_states(provider: Any) -> None:
    """Make a SlurmProvider that polls with ``squeue`` (no accounting) list ended jobs too, so a
    cancelled or timed-out block reads as what it was, not as COMPLETED."""
    cmd = getattr(provider, "_cmd", "")
    if isinstance(cmd, str) and cmd.startswith("squeue") and "-t all" not in cmd:
        provider._cmd = cmd.replace("squeue", "squeue -t all", 1)


@contextlib.contextmanager
def dry_run_discovery(addresses: Any) -> Iterator[None]:
    """HTEX constructors in a dry run find the worker-facing addresses with `addresses()` instead
    of Parsl's discovery (a hostname lookup, a route probe and a query to api.ipify.org)."""
    with mock.patch(ADDRESS_DISCOVERY, addresses):
        yield
