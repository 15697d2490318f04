"""A Globus Compute endpoint run for real on this machine, minus the hosted service.

:class:`EmulatedEndpoint` stands where ``globus_compute_sdk.Executor`` stands inside Parsl's
GlobusComputeExecutor. It does what the sdk and the service would do to a task, and nothing else
is faked: the function and arguments are serialized by the sdk's ``ComputeSerializer`` and packed
into a ``Task`` message; a real ``GlobusComputeEngine`` (HTEX workers, LocalProvider) started here
executes it with the endpoint's own ``execute_task``; the packed ``Result`` is unpacked, and an
error result raises the sdk's ``TaskExecutionFailed``. The service's 10 MB limit is enforced on each
submission (``TASK_PAYLOAD_TOO_LARGE``) and the engine enforces its own limit on results
(``MaxResultSizeExceeded``), so a job that passes here does not trip them in production.

Why a subclass that skips ``Executor.__init__``: the sdk's constructor creates a ``Client``, whose
first request starts Globus's interactive login; Parsl type-checks for the class.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from globus_compute_sdk import Executor

from fedgrid.executors.globus_compute import PAYLOAD_LIMIT

log = logging.getLogger("fedgrid")


class TaskPayloadTooLarge(Exception):
    """What the service answers to a submission over its limit (HTTP 413, TASK_PAYLOAD_TOO_LARGE)."""

    code = "TASK_PAYLOAD_TOO_LARGE"

    def __init__(self, size: int, limit: int = PAYLOAD_LIMIT):
        self.size, self.limit = size, limit
        super().__init__(f"{self.code}: task payload is {size / 2**20:.1f} MB; Globus Compute accepts at most "
                         f"{limit / 2**20:.0f} MB per task. Send large arguments by reference (fedgrid: set "
                         f"store.url to a directory or URL the endpoint can read)")


class EmulatedEndpoint(Executor):
    """An sdk Executor whose tasks run on a local GlobusComputeEngine instead of a remote endpoint."""

    def __init__(self, *, endpoint_id: str, run_dir: Path, workers: int = 1,
                 resource_specification: dict | None = None, user_endpoint_config: dict | None = None,
                 label: str = "", start: bool = True):
        # Deliberately not Executor.__init__ (see the module docstring); only the state Parsl reads.
        # Everything the start thread and submit() import is imported here first: two threads
        # importing the same package for the first time can deadlock on its module lock.
        import globus_compute_common.messagepack  # noqa: F401
        import globus_compute_endpoint.engines  # noqa: F401
        import globus_compute_endpoint.engines.base  # noqa: F401
        from globus_compute_sdk.serialize import ComputeSerializer

        self.endpoint_id = endpoint_id
        self.resource_specification = resource_specification
        self.user_endpoint_config = user_endpoint_config
        self.label = label
        self._serde = ComputeSerializer()
        self.run_dir = Path(run_dir).resolve()
        self.workers = workers
        self.engine: Any = None
        self._stopped = False
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._fn_cache: dict[int, str] = {}
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        if start:  # the engine's processes start in the background while the driver sets up
            threading.Thread(target=self._start, name=f"gc-emulated-{label}", daemon=True).start()
        else:  # a dry run (`fedgrid check`): nothing to start, nothing to wait for
            self._ready.set()

    def __repr__(self) -> str:
        return f"EmulatedEndpoint<{self.label}; ep_id:{self.endpoint_id}>"

    # -- engine ---------------------------------------------------------------------------------
    def _start(self) -> None:
        try:
            from globus_compute_endpoint.engines import GlobusComputeEngine
            from parsl.providers import LocalProvider

            # the engine launches its interchange and workers through `globus-compute-endpoint`,
            # found on PATH: make this interpreter's one win, so an un-activated venv works
            bindir = os.path.dirname(sys.executable)
            if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
                os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            engine = GlobusComputeEngine(
                address="127.0.0.1", max_workers_per_node=self.workers, heartbeat_period=2, heartbeat_threshold=10,
                encrypted=True,  # as every HTEX fedgrid starts
                provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1),
                job_status_kwargs={"strategy": "none", "strategy_period": 0.5})
            engine.start(endpoint_id=self.endpoint_id, run_dir=str(self.run_dir))
            with self._lock:
                stopped = self._stopped
                self.engine = None if stopped else engine
            if stopped:  # shut down while starting: stop what was started, leave nothing behind
                engine.shutdown()
        except BaseException as e:  # noqa: BLE001 - surfaced to every submit
            self._start_error = e
        finally:
            self._ready.set()

    def _engine(self) -> Any:
        if self._stopped:
            raise RuntimeError(f"emulated endpoint {self.label!r} is shut down")
        if self.engine is None and not self._ready.is_set():
            self._ready.wait()
        if self._start_error is not None:
            raise RuntimeError(f"emulated endpoint {self.label!r} did not start: {self._start_error}")
        if self.engine is None:
            raise RuntimeError(f"emulated endpoint {self.label!r} is not running")
        return self.engine

    # -- the sdk's side -------------------------------------------------------------------------
    # the sdk's Executor.submit takes `fn` by keyword too, which concurrent.futures.Executor's
    # (positional-only, so a task's own kwargs may hold an `fn`) rules out: no signature fits both
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:  # type: ignore[override]
        """Serialize and pack like the sdk, check the service's limit, run on the engine."""
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task
        from globus_compute_endpoint.engines.base import GCFuture

        fut: Future[Any] = Future()
        ser = self._serde
        key = id(fn)
        with self._lock:
            if key not in self._fn_cache:  # the sdk registers a function once, then sends only its id
                self._fn_cache[key] = ser.serialize(fn)
            self._pending.add(fut)
        fut.add_done_callback(self._forget)
        buf_args, buf_kwargs = ser.serialize(args), ser.serialize(kwargs)
        size = len(buf_args) + len(buf_kwargs)
        if size > PAYLOAD_LIMIT:
            fut.set_exception(TaskPayloadTooLarge(size))
            return fut
        task_id = uuid.uuid4()
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=ser.pack_buffers(
            [self._fn_cache[key], buf_args, buf_kwargs])))
        gc_fut = GCFuture(gc_task_id=task_id)
        gc_fut.add_done_callback(lambda f: self._deliver(f, fut))
        try:
            self._engine().submit(gc_fut, packed, resource_specification=dict(self.resource_specification or {}))
        except Exception as e:  # noqa: BLE001 - a submission error belongs to this task's future
            if not fut.done():
                fut.set_exception(e)
        return fut

    def _deliver(self, gc_fut: Future, fut: Future) -> None:
        """Unpack the endpoint's Result message as the sdk's result watcher does."""
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Result
        from globus_compute_sdk.errors import TaskExecutionFailed

        try:
            exc = gc_fut.exception()
            if exc is not None:
                fut.set_exception(exc)
                return
            res = messagepack.unpack(gc_fut.result())
            if not isinstance(res, Result):  # what the engine packs for a task; anything else fails the task
                raise TypeError(f"expected a Result message from the engine, got {type(res).__name__}")
            if res.is_error:
                details = res.error_details.__dict__ if res.error_details is not None else None
                fut.set_exception(TaskExecutionFailed(res.data, None, details))
            else:
                fut.set_result(self._serde.deserialize(res.data))
        except Exception as e:  # noqa: BLE001 - never leave a future unresolved
            if not fut.done():
                fut.set_exception(e)

    def _forget(self, fut: Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the engine; tasks still running fail (their futures never hang)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            pending = list(self._pending)
        for fut in pending:
            if not fut.done():
                fut.set_exception(RuntimeError(f"emulated endpoint {self.label!r} shut down before the task "
                                               "finished"))
        # an engine still starting is stopped by _start itself once it is up (see above)
        if self.engine is not None:
            try:
                self.engine.shutdown()
            except Exception as e:  # noqa: BLE001 - shutdown must not mask the run's outcome
                log.warning("emulated endpoint %s shutdown: %s", self.label, e)

    def _get_result_watcher(self) -> Any:
        """Parsl shuts the sdk's result watcher down; here results come straight from the engine."""
        return _NoWatcher()

    def local_executor(self) -> Any:
        """The engine's HTEX (its interchange and worker pools), for the run's process records."""
        return self.engine.executor if self.engine is not None else None


class _NoWatcher:
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None
