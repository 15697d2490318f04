"""Start Parsl's worker pool with its workers forked from a warm process, not spawned cold.

Parsl's pool starts each worker with multiprocessing's ``spawn``: a fresh interpreter that imports
Parsl again (about 1 s on a 2-core machine), and whose first task then imports torch (about 1.5 s),
one after the other before round 1 can start. Here the pool's workers come from multiprocessing's
``forkserver``, started as a fork of the pool process once that has imported Parsl's pool module
(not as a fresh interpreter that would import it again: about 0.7 s of CPU a site). The server then
imports torch and fedgrid's site code (:mod:`fedgrid.apps.preload`) while the pool registers with
its interchange, and a worker is a fork of it, ready in milliseconds. Queues, shared values and the
pool's manager server stay as Parsl makes them (``spawn``), so what crosses to a worker is pickled
exactly as before.

Run from its file (``runpy.run_path``), not imported: importing ``fedgrid.executors`` would import
every site kind and pydantic, which a pool never needs.

    python -c "import runpy; runpy.run_path('.../pool_start.py', run_name='__main__')" POOL_ARGS...
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.context as mpc
import multiprocessing.forkserver as forkserver
import multiprocessing.resource_tracker as resource_tracker
import multiprocessing.util as mp_util
import os
import runpy
import sys
import types
from collections.abc import Sequence
from typing import Any

from fedgrid.apps import lean

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"
PRELOAD = "fedgrid.apps.preload"


class PoolContext(mpc.SpawnContext):
    """Parsl's ``SpawnContext`` for the pool, with workers forked from the warm server. The pool's
    manager server stays spawned: a fork of it would be a fork of the forkserver too, and it needs
    none of what the forkserver loads."""

    Process = mpc.ForkServerProcess  # type: ignore[assignment]

    def Manager(self):  # noqa: N802, ANN201 - multiprocessing's name
        # The server only holds a dict and a queue, but a spawned child re-imports its parent's main
        # module, here Parsl's pool (about 1 s of CPU, which the pool waits for before it registers).
        # A bare main while it starts spares that (no other thread runs yet to see it).
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            return multiprocessing.get_context("spawn").Manager()
        finally:
            sys.modules["__main__"] = main


_SPAWN = mp_util.spawnv_passfds


def _fork_instead(path: bytes, args: Sequence[Any], passfds: Sequence[int]) -> int:
    """multiprocessing's ``spawnv_passfds`` for the forkserver's start: the command it would run in
    a new interpreter (``python -c CMD``, the server's main loop) runs in a fork of this one, with
    only the descriptors it would have had."""
    if len(args) < 2 or args[-2] != "-c":  # not the command this was written for: start it as usual
        return _SPAWN(path, args, passfds)
    pid = os.fork()
    if pid:
        return pid
    code = 1  # the child never returns into the pool's code; a failure here is its exit status
    try:
        keep = sorted({0, 1, 2, *passfds})
        for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(low + 1, high)
        exec(args[-1], {"__name__": "__forkserver__"})  # noqa: S102 - multiprocessing's own command
        code = 0
    except SystemExit as stop:  # how the server's loop ends once the pool has gone
        code = stop.code if isinstance(stop.code, int) else 0
    finally:
        os._exit(code)


def start_forkserver() -> None:
    """The forkserver, forked now: before the pool starts a thread or opens a socket, after it has
    imported what the server would import first."""
    forkserver.set_forkserver_preload([PRELOAD])
    resource_tracker.ensure_running()  # spawned as usual (the server's start would start it too)
    mp_util.spawnv_passfds = _fork_instead
    try:
        forkserver.ensure_running()
    finally:
        mp_util.spawnv_passfds = _SPAWN


def main() -> None:
    lean.spare()  # a pool talks to neither Kubernetes nor Globus Compute
    importlib.import_module(POOL_MODULE)  # as a module, for the forkserver; run as main below
    start_forkserver()
    import parsl.multiprocessing

    parsl.multiprocessing.SpawnContext = PoolContext()  # read by the pool module as it is run below
    runpy.run_module(POOL_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
