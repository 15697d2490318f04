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
from collections.abc import Callable, Iterator
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


def add_executors_at_once(dfk: Any, executors: list[Any]) -> Callable[[], None]:
    """``dfk.add_executors(executors)`` with the HTEX executors' starts overlapped; returns what
    to call once the DataFlowKernel is cleaned up.

    Parsl starts executors one after another, and an HTEX's start waits for its interchange
    process to come up (an interpreter importing Parsl, about 1.5 s here), so the first site's
    blocks are not even requested before the last site has started. Here each HTEX gets what
    ``add_executors`` assigns before a start (run id, run directory, log config, the provider's
    script folder), is started on a thread of its own, and is then handed to ``add_executors``
    with its start already done. Each thread then waits for the returned release: the
    interchange's guard (executors/ic_guard.py) asks the kernel for SIGKILL when its parent
    *thread* ends, so a starter thread must outlive its interchange. Other executors, and a
    DataFlowKernel with monitoring (whose receivers ``add_executors`` builds before a start),
    start as Parsl starts them."""
    import os
    import threading

    from parsl.executors import HighThroughputExecutor

    release = threading.Event()
    htex = [ex for ex in executors if isinstance(ex, HighThroughputExecutor)]
    if len(htex) < 2 or dfk.monitoring is not None:
        dfk.add_executors(executors)
        return release.set
    started: list[threading.Event] = []
    errors: list[BaseException] = []

    def start(ex: Any, done: threading.Event) -> None:
        try:
            ex.run_id, ex.run_dir, ex.log_config = dfk.run_id, dfk.run_dir, dfk.log_config
            if hasattr(ex.provider, "script_dir"):
                ex.provider.script_dir = os.path.join(dfk.run_dir, "submit_scripts")
                os.makedirs(ex.provider.script_dir, exist_ok=True)
            ex.start()
        except BaseException as e:  # noqa: BLE001 - raised by the caller, once every start has ended
            errors.append(e)
        finally:
            done.set()
        release.wait()  # the interchange this thread started lives only as long as the thread

    for ex in htex:
        started.append(done := threading.Event())
        threading.Thread(target=start, args=(ex, done), name=f"fedgrid-site-{ex.label}", daemon=True).start()
    for done in started:
        done.wait()
    for ex in htex:  # started: add_executors's own call of start() is skipped
        ex.start = _nothing  # type: ignore[method-assign]  # on the instance, once: Parsl's start() is back below
    try:
        dfk.add_executors(executors)  # every one, so the DataFlowKernel's cleanup shuts them all down
    finally:
        for ex in htex:
            ex.__dict__.pop("start", None)
    if errors:
        raise errors[0]
    return release.set


def _nothing() -> None:
    """An executor's start, once it has started."""
