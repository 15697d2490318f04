"""Start Parsl's worker pool with its workers forked from a warm process, not spawned cold.

Parsl's pool starts each worker with multiprocessing's ``spawn``: a fresh interpreter that imports
Parsl again (about 1 s on a 2-core machine), and whose first task then imports torch (about 1.5 s),
one after the other before round 1 can start. Here the pool's workers come from a ``forkserver``
started the moment the pool starts, which imports Parsl's pool module, torch and fedgrid's site
code once (:mod:`fedgrid.apps.preload`) while the pool registers with its interchange; a worker is
then a fork of it, ready in milliseconds. Queues, shared values and the pool's manager server stay
as Parsl makes them (``spawn``), so what crosses to a worker is pickled exactly as before.

Run from its file (``runpy.run_path``), not imported: importing ``fedgrid.executors`` would import
every site kind and pydantic, which a pool never needs.

    python -c "import runpy; runpy.run_path('.../pool_start.py', run_name='__main__')" POOL_ARGS...
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context as mpc
import multiprocessing.forkserver as forkserver
import runpy
import sys
import threading

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"
PRELOAD = "fedgrid.apps.preload"


class PoolContext(mpc.SpawnContext):
    """Parsl's ``SpawnContext`` for the pool, with workers forked from the warm server. The pool's
    manager server stays spawned: a fork of it would be a fork of the forkserver too, and it needs
    none of what the forkserver loads."""

    Process = mpc.ForkServerProcess  # type: ignore[assignment]

    def Manager(self):  # noqa: N802, ANN201 - multiprocessing's name
        return multiprocessing.get_context("spawn").Manager()


def main() -> None:
    # a pool never talks to Kubernetes, and Parsl's import of its provider costs about 0.5 s
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    forkserver.set_forkserver_preload([PRELOAD])
    # started now, so its imports overlap with the pool's own start and registration
    threading.Thread(target=forkserver.ensure_running, name="fedgrid-forkserver", daemon=True).start()
    import parsl.multiprocessing

    parsl.multiprocessing.SpawnContext = PoolContext()  # read by the pool module as it is run below
    runpy.run_module(POOL_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
