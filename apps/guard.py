"""Client code at a site, contained: what it does costs only its own client.

A task's client code runs inside a persistent Parsl worker that serves every client of its site,
so whatever that code does — hang, kill its worker, print without end, start processes — would
otherwise cost the other clients, later rounds or the machine. Around every task (train, evaluate,
warm-up) :func:`guarded`:

- **ends it at its time limit** (``train.timeout_s``, else the round's deadline): the task's thread
  gets an exception (SIGALRM in a worker's main thread, which also interrupts a ``sleep``); client
  code that swallows it or is stuck in native code is ended with its worker after a grace period,
  and the pool replaces the worker. Either way the failure reads ``timeout: ...``;
- **keeps a black box** per worker (:mod:`fedgrid.apps.blackbox`): a worker that dies in a task
  (SIGSEGV, ``os._exit``, the OOM killer) is named by the task's retry, which reads the box and
  fails at once with ``worker died: SIGSEGV in client code [at x.py:12 in train]`` instead of
  running the crash again;
- **caps the worker's output**: its stdout and stderr (C libraries and subprocesses included)
  go through a pipe into two rotating files, ``output_mb`` in all (:mod:`fedgrid.apps.outputs`);
- **ends the processes the client started** when its task ends: the worker is a child subreaper,
  so even a ``setsid`` double-forked daemon is its descendant; and every process a worker starts
  carries ``FEDGRID_RUN=<run nonce>``, by which the driver ends what escaped a dead worker.

Only a worker process of its own gets all of it. A ``local`` site runs clients in threads of the
driver, where a limit can only interrupt Python code and nothing process-wide is touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fedgrid.apps import blackbox, outputs

RUN_ENV = "FEDGRID_RUN"  # marks every process a worker of this run starts (the driver's reaper reads it)
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Guard:
    """How a site contains one task's client code (built by the driver for every task)."""

    run: str  # the run's nonce: names its private scratch folder and marks its processes
    limit_s: float | None  # seconds the task may run at its site; None: no limit
    limit_key: str  # what set the limit (a job key), named in the failure
    output_dir: str | None = None  # where workers' output goes (else the run's private scratch)
    output_max: int = 16 << 20  # bytes of output a worker keeps
    grace_s: float | None = None  # after the limit, until the worker is ended (None: 5 s + 10%, within limit and 30 s)


class TaskTimeout(RuntimeError):
    """The task ran past its limit and was ended at its site."""

    plain = True  # the message is the reason (apps/update.py Failure.of)


class _Interrupt(BaseException):
    """Raised in the task's thread at its limit: a BaseException, so the client's own ``except
    Exception`` does not swallow it."""


IN_DRIVER = False  # set by the driver: its threads (a `local` site) are never a worker of their own


def dedicated() -> bool:
    """Whether this process is a Parsl worker of its own (a pool's worker, not the driver)."""
    return not IN_DRIVER and "PARSL_WORKER_RANK" in os.environ and \
        threading.current_thread() is threading.main_thread()


class _Worker:
    """What a dedicated worker sets up once: its black box, output pipe, subreaper and marker."""

    def __init__(self, g: Guard):
        self.run = g.run
        self.box = blackbox.Box(blackbox.scratch(g.run))
        with contextlib.suppress(OSError):  # no folder it may write: its output stays where Parsl put it
            outputs.capture(outputs.folder(g.output_dir, self.box.dir.parent), g.output_max)
        os.environ[RUN_ENV] = g.run
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        signal.signal(signal.SIGALRM, _on_alarm)
        # what the worker runs of its own (before any task): never a client's to end
        self.baseline = outputs.descendants()
        # the running task's timer, and the timer that fired: an alarm meant for a task that has
        # just finished never interrupts the next one
        self.armed: object | None = None
        self.fired: object | None = None


_WORKER: list[_Worker] = []


def _worker(g: Guard) -> _Worker:
    if not _WORKER or _WORKER[0].run != g.run:
        _WORKER[:] = [_Worker(g)]
    return _WORKER[0]


def _on_alarm(signum: int, frame: object) -> None:
    w = _WORKER[0] if _WORKER else None
    if w is not None and w.armed is not None and w.armed is w.fired:
        w.armed = None
        raise _Interrupt


@contextlib.contextmanager
def guarded(g: Guard | None, client: int, rnd: int, what: str, on_timeout: Callable[[], None] | None = None,
            relaunched: bool = True) -> Iterator[None]:
    """Run the body (one task of `client` at round `rnd`) contained as the module says.
    `relaunched`: the task may be a retry after its worker died (else its box lookup is skipped)."""
    if g is None:
        yield
        return
    w = _worker(g) if dedicated() else None
    if w is not None:
        if relaunched:
            w.box.check(client, rnd, what)  # a retry after its worker died: fail now, naming how
        w.box.enter(client, rnd, what, g.limit_s)
    timer = _Timer(g, w, what)
    try:
        yield
    except _Interrupt:
        if on_timeout is not None:
            on_timeout()
        raise TaskTimeout(timeout_reason(g, what)) from None
    finally:
        timer.cancel()  # first: nothing may interrupt this task from here on
        if w is not None:
            w.armed = None
            outputs.flush()
            outputs.end_descendants(w.baseline)
            w.box.leave()


def timeout_reason(g: Guard, what: str, stuck: bool = False) -> str:
    how = ("did not stop when interrupted, so its worker was ended and replaced" if stuck
           else "was ended at its site and its worker given back")
    return f"timeout: {what} ran past {g.limit_s:g} s ({g.limit_key}) and {how}"


class _Watchdog:
    """One thread per process that ends tasks at their limits. A thread of its own per task cost
    about 0.3 ms to start, as much as a small client's whole task in a cohort (apps/cohort.py)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._due: list[list] = []  # heap of [when (monotonic), seq, call, live]
        self._dead = 0  # cancelled entries still in the heap (most tasks end long before their limit)
        self._seq = itertools.count()
        self._owner = 0  # the pid whose thread runs: a forked child starts its own

    def at(self, delay_s: float, call: Callable[[], None]) -> list:
        """Call `call` on the watchdog's thread in `delay_s` seconds, unless :meth:`cancel` first."""
        entry = [time.monotonic() + delay_s, next(self._seq), call, True]
        with self._cv:
            if self._owner != os.getpid():
                self._owner = os.getpid()
                threading.Thread(target=self._run, name="fedgrid-task-limits", daemon=True).start()
            heapq.heappush(self._due, entry)
            if self._due[0] is entry:
                self._cv.notify()
        return entry

    def cancel(self, entry: list | None) -> None:
        """Withdraw `entry`. Its call (and the task it holds) is released now, and the heap is
        compacted once most of it is cancelled: a worker that serves thousands of clients a round
        would otherwise keep every finished task's entry until its limit, hours away."""
        if entry is None or not entry[3]:
            return
        with self._cv:
            entry[3], entry[2] = False, None
            self._dead += 1
            if self._dead > 64 and 2 * self._dead > len(self._due):
                self._due = [e for e in self._due if e[3]]
                heapq.heapify(self._due)
                self._dead = 0

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._due and not self._due[0][3]:
                    heapq.heappop(self._due)
                    self._dead -= 1
                wait = self._due[0][0] - time.monotonic() if self._due else None
                if wait is None or wait > 0:
                    self._cv.wait(wait)
                    continue
                entry = heapq.heappop(self._due)
            call = entry[2]
            if entry[3] and call is not None:
                call()


WATCHDOG = _Watchdog()


class _Timer:
    """The task's limit: an interrupt at `limit_s`; in a worker of its own, the worker's end after
    a grace period (a C call that never returns cannot be interrupted)."""

    def __init__(self, g: Guard, w: _Worker | None, what: str):
        self._done = False
        # a driver thread is interrupted at most once, and only while its task runs: an async
        # exception that landed after the task, in the thread pool's own loop, would end that
        # thread and hang the pool's shutdown
        self._lock = threading.Lock()
        self._interrupted = False
        self._entry: list | None = None
        if not g.limit_s:
            return
        self.g, self.w, self.what = g, w, what
        self.limit_s: float = g.limit_s  # set (the early return above)
        self.ident = threading.get_ident()
        self.task = w.box.task if w is not None else None
        if w is not None:
            w.armed = self
        self._entry = WATCHDOG.at(g.limit_s, self._limit)

    def _limit(self) -> None:
        """On the watchdog's thread, at the limit."""
        if self._done:
            return
        if self.w is None:  # a driver thread: only Python code can be interrupted there
            self.interrupt()
            return
        self.w.fired = self
        signal.pthread_kill(self.ident, signal.SIGALRM)
        g, limit_s = self.g, self.limit_s
        grace = g.grace_s if g.grace_s is not None else min(limit_s, 5.0 + 0.1 * limit_s, 30.0)
        self._entry = WATCHDOG.at(grace, self._end_worker)

    def _end_worker(self) -> None:
        """After the grace: a task that is still the same one did not stop; its worker goes."""
        w = self.w  # set: only a worker's timer schedules this
        if self._done or w is None or w.box.task is not self.task:  # finished meanwhile
            return
        w.box.died(timeout_reason(self.g, self.what, stuck=True))
        blackbox.real_exit(70)

    def interrupt(self) -> None:
        """End the task in a driver thread (its Python code: a C call runs on to its end)."""
        with self._lock:
            if self._done or self._interrupted:
                return
            self._interrupted = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), ctypes.py_object(_Interrupt))

    def cancel(self) -> None:
        """The task is over (called in its own thread): an interrupt still pending is withdrawn."""
        with self._lock:
            self._done = True
            WATCHDOG.cancel(self._entry)
            if self._interrupted:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)
