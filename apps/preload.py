"""What a site's worker pool loads once, in the process its workers are forked from.

Imported by the pool's forkserver (fedgrid.executors.pool_start) before any worker exists: Parsl's
pool module (which each worker runs as its main module), torch and the site code of fedgrid, so a
forked worker has them all and its first task pays none of their imports. Nothing here may start a
thread, open a connection or initialize CUDA (Parsl pins a worker's GPUs in the worker, after the
fork): every worker is a fork of this process. A failed import only costs
its time back later (the worker imports it itself, and reports any error in its task).
"""

from __future__ import annotations

import contextlib
import importlib

from fedgrid.apps import lean

lean.spare()
# torch._dynamo: the first torch optimizer a process builds imports it (sympy included, about 1.5 s)
for _name in ("parsl.executors.high_throughput.process_worker_pool", "torch", "torch._dynamo", "fedgrid.apps.train",
              "fedgrid.apps.cohort", "fedgrid.apps.models", "fedgrid.apps.datasets"):
    with contextlib.suppress(Exception):
        importlib.import_module(_name)
lean.restore()
