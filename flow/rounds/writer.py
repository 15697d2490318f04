"""The round writer: central evaluation, the Arrow checkpoint, the rounds table and the progress
line of round r, on one background thread while round r+1 trains.

The sites never wait for the driver's disk, yet rounds are still written strictly in order, and a
failed write stops the run before another round is started (`check` / the next `hand_off`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedgrid.apps.store import Store
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.table import RoundsTable
from fedgrid.flow.rounds.progress import RunProgress

log = logging.getLogger("fedgrid")

ALL_ROUNDS = 10**9  # Store.sweep bound that takes every round's objects

Evaluate = Callable[[dict[str, np.ndarray]], dict[str, float]]


def release_native() -> None:
    """Give memory freed by the round just written back to the OS: Arrow's pool and glibc's
    allocator both keep freed pages after a peak (a round's table part, its checkpoint), so a
    long run's resident memory would creep up by a round's peak now and then although the
    driver holds no more objects. Cheap (a few ms), once a round, on the bookkeeping thread."""
    import ctypes

    import pyarrow as pa

    with contextlib.suppress(Exception):  # an allocator without the call: nothing to give back
        pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): no malloc_trim
        ctypes.CDLL(None).malloc_trim(0)  # this process's own symbols, libc's among them


class RoundWriter:
    """Writes each finished round, in order, on a background thread.

    `evaluate` (the central test set, or None when the job has none) runs every
    ``round.eval_every`` rounds and on the last. `store` is swept of round objects no client can
    still read: ``sweep_lag`` rounds are kept (asynchronous clients train from the globals of the
    last max_staleness steps, a carried late client from its round's).
    """

    def __init__(self, run_dir: Path, rounds: int, eval_every: int, keep: int, table: RoundsTable,
                 progress: RunProgress, evaluate: Evaluate | None, store: Store | None, sweep_lag: int):
        self.run_dir, self.rounds, self.eval_every, self.keep = run_dir, rounds, eval_every, keep
        self.table, self.progress, self.evaluate = table, progress, evaluate
        self.store, self.sweep_lag = store, sweep_lag
        # At the process's own priority, not lowered: where workers share the driver's cores, a
        # low-priority evaluation gets almost no CPU while they train, and since round r+2 waits
        # for round r's write, it then runs alone on one core while the other idles (1.0-1.9 s a
        # round on the fmnist example with two local workers). Sharing the cores removes that gap,
        # at the cost of clients training slower for the evaluation's second or so (BENCHMARKS.md).
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedgrid-ckpt")
        self.pending: Future | None = None
        self.after: Callable[[dict], None] | None = None  # told each row once it is in the table (tracking)

    def first(self, state: ckpt.RoundState) -> None:
        """Round 0 (the initial model) of a fresh run, written at once."""
        ckpt.write_round(self.run_dir, state)

    def _finalize(self, state: ckpt.RoundState) -> None:
        rnd, params, row = state.round, state.params, state.row
        if self.evaluate is not None and (rnd % self.eval_every == 0 or rnd == self.rounds):
            t0 = time.perf_counter()
            m = self.evaluate(params)
            row.update(test_accuracy=m["accuracy"], test_loss=m["loss"], eval_s=time.perf_counter() - t0)
        ckpt.write_round(self.run_dir, state)
        self.table.append(row)
        ckpt.prune(self.run_dir, self.keep, rnd)
        if self.store is not None:  # the round's objects are in the checkpoint now (or were transient)
            self.store.sweep(rnd - self.sweep_lag)
        self.progress.round_done(row)
        if self.after is not None:
            self.after(row)
        release_native()

    def hand_off(self, state: ckpt.RoundState) -> None:
        """Queue a round (its state taken on the main thread); waits for the previous one first,
        so a failed write of round r-1 stops the run here."""
        if self.pending is not None:
            self.pending.result()
        self.pending = self.pool.submit(self._finalize, state)

    def check(self) -> None:
        """Raise now if a background write already failed, before another round is started."""
        if self.pending is not None and self.pending.done():
            self.pending.result()

    def drain(self) -> None:
        """Wait for the last round to be written (raises its error); the store's leftovers go."""
        if self.pending is not None:
            self.pending.result()
        self.pool.shutdown(wait=True)
        if self.store is not None:
            self.store.sweep(ALL_ROUNDS)

    def close(self) -> None:
        """On the way out after an error: rounds already finished are still written; a write
        error is logged, never raised over the run's own error."""
        try:
            if self.pending is not None:
                self.pending.result()
        except Exception as e:  # noqa: BLE001 - report, but keep the original error
            log.error("checkpoint write failed: %s", e)
        finally:
            self.pool.shutdown(wait=True)
