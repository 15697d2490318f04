"""The tolerant gather: wait for a round's train futures under a quorum and a deadline.

Parsl cannot stop a running torch op (its walltime only interrupts Python code, by injecting an exception), so
the deadline is enforced here, by whoever waits. The futures are never passed to another app as
data dependencies: one failed client would turn every downstream app into a DependencyError. This
waits on them directly and turns each outcome into data — an update, or a failure with a reason.

It returns when every selected client has answered, when the deadline passes, or as soon as the
quorum can no longer be met (there is no point waiting for the stragglers of a doomed round).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from fedgrid.apps.update import ClientUpdate, Failure


@dataclass
class Gathered:
    updates: list[ClientUpdate] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    late: dict[int, tuple[str, Future]] = field(default_factory=dict)  # not waited for, still running

    def quorum_met(self, quorum: int) -> bool:
        return len(self.updates) >= quorum


SITE_DOWN = "site down: it has no workers left (pool died or node lost); tried again next round"


def gather(futures: dict[int, tuple[str, Future]], quorum: int, deadline_s: float,
           on_result: Callable[[int, bool], None] | None = None,
           accept: Callable[[int, str, Any], ClientUpdate] | None = None,
           down: Callable[[], dict[str, str]] | None = None, poll_s: float = 1.0, *, reads: bool = True) -> Gathered:
    """Collect the outcome of `futures` ({client: (site, future)}); never raises for a client.

    `accept(client, site, answer)` runs on each answer as it arrives, while other clients are still
    training (checking it against what was sent to that client, fetching a
    by-reference update, checking it); if it raises, that client is a failure with the reason.
    `reads` says whether `accept` reads data (the round mode's `reads`, flow/rounds/modes): only
    then is a by-reference answer accepted on a thread bounded by the deadline.
    `down` is polled every `poll_s` while waiting: the pending clients of a site it names (its
    workers are gone) fail at once instead of holding the round until its deadline.
    """
    t0 = time.monotonic()
    out = Gathered()
    pending = {c: fut for c, (_, fut) in futures.items()}
    answers, next_poll = arrivals(pending), t0 + poll_s
    while pending:
        now = time.monotonic()
        remaining = deadline_s - (now - t0)
        if remaining <= 0 or len(out.updates) + len(pending) < quorum:
            break
        try:
            client = answers.get(timeout=min(remaining, max(next_poll - now, 0.0)) if down else remaining)
        except queue.Empty:
            client = None
        if client is not None and (fut := pending.pop(client, None)) is not None:  # None: dropped as lost
            _settle(client, futures[client][0], fut, out, on_result, accept, deadline_s - (time.monotonic() - t0),
                    reads)
        if down and time.monotonic() >= next_poll:
            next_poll = time.monotonic() + poll_s
            if pending and (lost := down()):
                _drop_lost(lost, pending, futures, out, on_result)
    elapsed = time.monotonic() - t0
    for client, fut in pending.items():
        why = (f"late: no answer within round.deadline_s={deadline_s:g}" if elapsed >= deadline_s
               else "abandoned: round could not reach its quorum")
        out.failures.append(Failure.of(client, futures[client][0], why))
        fut.add_done_callback(lambda f: f.exception())  # consume the late outcome quietly
        out.late[client] = (futures[client][0], fut)  # still running: its client is busy; may be carried
    out.updates.sort(key=lambda u: u.client)
    out.failures.sort(key=lambda f: f.client)
    out.seconds = elapsed
    return out


A = TypeVar("A")  # what the accept hook makes of an answer (a ClientUpdate; a site's partial in two-tier)


@overload
def accept_within(accept: Callable[[int, str, Any], A], client: int, site: str, answer: Any,
                  remaining: float, reads: bool = True) -> A: ...


@overload
def accept_within(accept: None, client: int, site: str, answer: Any, remaining: float, reads: bool = True) -> Any: ...


def accept_within(accept: Callable[[int, str, Any], A] | None, client: int, site: str, answer: Any,
                  remaining: float, reads: bool = True) -> A | Any:
    """The accept hook on one answer. An answer by reference that the hook `reads` is read from
    the store on a daemon thread, waited for at most the round's remaining time: a hung mount must
    not hold the round past its deadline (the thread is left to finish, or not, on its own)."""
    if accept is None:
        return answer
    if getattr(answer, "ref", None) is None or not reads:
        return accept(client, site, answer)  # nothing to read (round.aggregate: site: it stays at the site)
    box: dict[str, Any] = {}

    def read() -> None:
        try:
            box["ok"] = accept(client, site, answer)
        except BaseException as e:  # noqa: BLE001 - handed to the gather as this client's failure
            box["err"] = e

    t = threading.Thread(target=read, name=f"fedgrid-read-{client}", daemon=True)
    t.start()
    t.join(max(remaining, 0.0))
    if t.is_alive():
        raise TimeoutError("late: reading its update from the store did not finish within round.deadline_s")
    if "err" in box:
        raise box["err"]
    return box["ok"]


def arrivals(pending: dict[int, Future]) -> queue.SimpleQueue:
    """A queue that receives each client as its future settles. One callback per future, so the
    gather's waiting costs O(1) per answer: `as_completed` or `wait()` called again at every poll
    for the down sites registers a waiter on every pending future each time (and locks them all)."""
    q: queue.SimpleQueue = queue.SimpleQueue()
    for c, fut in pending.items():
        fut.add_done_callback(_put(q, c))
    return q


def _put(q: queue.SimpleQueue, client: int) -> Callable[[Future], None]:
    return lambda _: q.put(client)


def _settle(client: int, site: str, fut: Future, out: Gathered, on_result: Callable[[int, bool], None] | None,
            accept: Callable[[int, str, Any], ClientUpdate] | None, remaining: float, reads: bool = True) -> None:
    """One answer into the gather's outcome: the update the accept hook makes of it, or the
    failure of the task or of the hook."""
    exc = fut.exception()
    if exc is None:
        try:
            out.updates.append(accept_within(accept, client, site, fut.result(), remaining, reads))
        except Exception as e:  # noqa: BLE001 - a bad update is this client's failure, not the round's
            exc = e
    if exc is not None:
        out.failures.append(Failure.of(client, site, exc))
    if on_result:
        on_result(client, exc is None)


def _drop_lost(lost: dict[str, str], pending: dict[int, Future], futures: dict[int, tuple[str, Future]], out: Gathered,
               on_result: Callable[[int, bool], None] | None) -> None:
    """The pending clients of sites that lost their workers fail now, not at the deadline."""
    for client, fut in list(pending.items()):
        site = futures[client][0]
        if site in lost:
            pending.pop(client)
            fut.add_done_callback(lambda f: f.exception())
            out.failures.append(Failure.of(client, site, lost[site]))
            if on_result:
                on_result(client, False)


def when_done(futures: list[Future], then: Callable[[], Any]) -> None:
    """Call `then()` once every one of `futures` is done, failed or cancelled, in the thread that
    finished the last one (this one, if none is pending). Done callbacks, unlike
    concurrent.futures.wait, also see a future cancelled before anything ran it."""
    left = len(futures)
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        nonlocal left
        with lock:
            left -= 1
            last = left == 0
        if last:
            then()

    if not futures:
        then()
    for f in futures:
        f.add_done_callback(one_done)
