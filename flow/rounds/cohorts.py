"""Cohort tasks, driver side: how many clients a site's train task carries, and one future per client.

Each train task costs Parsl about 3 ms of CPU on this kind of machine (the driver's task record,
the interchange, the worker pool's round trip: BENCHMARKS.md, round overhead), as much as or more
than a small client's whole round. So a site's clients go out in cohorts (apps/cohort.py) sized
to take about :data:`TARGET_S` each from the clients' measured training times (their profiles),
never fewer than two tasks per worker (so workers finish together), and learning as the clients
speed up or slow down. Only sites with many clients a worker (:data:`CROWDED`) get cohorts by
default: a cohort answers when its last client is done, so its clients' answers wait for each
other (apps/cohort.py caps each one's time at the round's deadline). The gather still sees one
future per client, each resolved with that client's own update or failure when its cohort's task
returns.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from typing import Any

import numpy as np

from fedgrid.apps.task import TrainTask

TARGET_S = 0.2  # a cohort task this long spends ~1% of its time on Parsl's per-task cost
CROWDED = 16  # clients per worker from which a site's clients go in cohorts (auto)
PER_CLIENT_S = 0.5e-3  # fedgrid's own work per client in a task (load, checks, send back), beside training
UNKNOWN = 16  # the most clients a task carries before their training times are known
MOST = 1024  # clients a task carries at most: its answers come back together, in one message


def size(setting: str | int, train_s: np.ndarray, clients: int, workers: int) -> int:
    """Clients per task for `clients` of one site with `workers` workers. `train_s` is their
    measured seconds of training (NaN where unknown); an int `setting` is taken as it is."""
    if setting != "auto":
        return int(setting)
    if clients < CROWDED * max(workers, 1):
        # few clients a worker: Parsl's cost is small beside the round, and one task each keeps
        # every answer as early as it can be (a cohort answers when its last client is done)
        return 1
    spread = math.ceil(clients / (2 * max(workers, 1)))  # at least two tasks per worker
    known = train_s[~np.isnan(train_s)]
    if len(known) < max(1, len(train_s) // 2):  # round 1, or mostly new clients: start small
        return max(1, min(spread, UNKNOWN))
    each = float(np.median(known)) + PER_CLIENT_S
    return max(1, min(spread, MOST, math.floor(TARGET_S / each)))


def split(tasks: list[TrainTask], k: int) -> list[list[TrainTask]]:
    """`tasks` in order, k at a time (the last cohort may be smaller)."""
    return [tasks[i:i + k] for i in range(0, len(tasks), k)]


def per_client(cohort: Future, tasks: list[TrainTask]) -> dict[int, Future]:
    """A future per client of a cohort, resolved with its update or failure when the cohort's task
    returns; a task that fails as a whole (its site lost, its worker dead twice) fails each client."""
    futs: dict[int, Future] = {t.client: Future() for t in tasks}

    def settle(f: Future) -> None:
        if (exc := f.exception()) is not None:
            for fut in futs.values():
                fut.set_exception(exc)
            return
        answers: Any = f.result()
        if not isinstance(answers, list) or len(answers) != len(tasks):
            wrong = ValueError(f"a cohort task of {len(tasks)} clients answered "
                               f"{len(answers) if isinstance(answers, list) else type(answers).__name__}")
            for fut in futs.values():
                fut.set_exception(wrong)
            return
        for t, a in zip(tasks, answers, strict=True):
            if isinstance(a, Exception):
                futs[t.client].set_exception(a)
            elif isinstance(a, BaseException):  # a site's KeyboardInterrupt must not stop the driver
                futs[t.client].set_exception(RuntimeError(f"{type(a).__name__}: {a}"))
            else:  # checked like any answer by the gather's accept (validate.envelope)
                futs[t.client].set_result(a)

    cohort.add_done_callback(settle)
    return futs
