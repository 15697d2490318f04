"""A cohort task: several clients of one site trained one after another in one worker task.

Parsl costs about as much per task as fedgrid's own work on a small client (BENCHMARKS.md, round
overhead), so many small clients are cheaper as fewer, longer tasks. Each client of a cohort stays
its own client: its own TrainTask (settings, pacing budget, strategy instructions, state version),
its own guard and time limit (apps/guard.py), its own update or failure. A client that raises or
hangs past its limit fails alone, and the cohort goes on with the next one.

A client that kills its worker (a crash, or one that ignores its interrupt) takes the whole task
with it; Parsl's retry of the lost worker runs the cohort again, where the black box fails that
client at once (apps/blackbox.py) and the others train again from the same inputs.

``until`` is when the round stops waiting: clients not started by then are not started at all
(their failure says so), and a client still training then is ended there (its time limit is
capped at the time left), since the cohort's answers, its earlier clients' included, travel
together when its last client is done: one client running on past the deadline would make every
answer of its cohort late.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import replace

from fedgrid.apps.guard import Guard
from fedgrid.apps.task import TrainTask
from fedgrid.apps.train import train_client
from fedgrid.apps.update import ClientUpdate


class NotStarted(RuntimeError):
    """A cohort's client that its worker never started: the round stopped waiting first."""

    plain = True  # the message is the reason (apps/update.py Failure.of)


def train_cohort(tasks: list[TrainTask], until: float | None = None) -> list[ClientUpdate | BaseException]:
    """Train each task's client in turn; each answer is its update or the exception it raised."""
    out: list[ClientUpdate | BaseException] = []
    for task in tasks:
        if until is not None and time.time() >= until:
            out.append(NotStarted("not started: the round's deadline passed while earlier clients of its cohort "
                                  "trained (round.deadline_s)"))
            continue
        if until is not None and task.guard is not None:
            task.guard = capped(task.guard, until - time.time())
        try:
            out.append(train_client(task))
        except Exception as e:  # noqa: BLE001 - any error is this client's own failure, sent back as data
            out.append(portable(e))
    return out


def capped(g: Guard, left_s: float) -> Guard:
    """`g` with its limit no later than the round's deadline, `left_s` from now."""
    if g.limit_s is not None and g.limit_s <= left_s:
        return g
    return replace(g, limit_s=round(max(left_s, 0.1), 1), limit_key="round.deadline_s: its cohort answers together")


def portable(e: BaseException) -> BaseException:
    """The exception as it can travel back to the driver: itself, or its type and message."""
    try:
        pickle.dumps(e)
        return e
    except Exception:  # noqa: BLE001 - an exception that will not pickle (a lock or a socket in its args)
        return RuntimeError(f"{type(e).__name__}: {e}")
