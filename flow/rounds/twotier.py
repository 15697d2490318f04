"""``round.aggregate: site`` — the driver's half of two-tier aggregation.

Per site and round the DAG gets one aggregation app (apps/siteagg.py) on the site's executor. Its
input is a future the driver settles when all of the site's train tasks have answered or failed,
or at the site's deadline (``round.site_deadline_fraction`` of the round's), whichever is first:
Parsl starts the aggregator then, on a worker the clients no longer need. The clients' updates
stay in the site's store; only their envelopes (counts, metrics, timings) and one partial per site
come to the driver.

The driver checks every envelope as in flat rounds and every partial against them: the partial's
clients must be clients whose answers the driver accepted, its example count their sum, its sum
finite and shaped like the model. A site whose aggregator fails, is late or does not add up costs
that site's clients for the round, never the round. Each partial becomes one contribution: the
site's mean (summed in float64 at the site, sent in the model's dtype) weighted by its examples,
so a mean-based strategy computes the same mean as over the clients themselves (to the float32
rounding of each site's mean).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait
from typing import Any

import numpy as np

from fedgrid.apps.siteagg import SiteAggTask, SitePartial
from fedgrid.apps.store import Ref, fetch
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.rounds.gather import Gathered, accept_within
from fedgrid.flow.rounds.validate import InvalidUpdate, inside

Params = dict[str, np.ndarray]


def _settle(futs: list[Future], at: float) -> Future:
    """A future that resolves when all of `futs` are done, or at time `at`, whichever is first."""
    out: Future = Future()
    lock = threading.Lock()
    left = [len(futs)]  # a countdown, not a scan of every future per answer (1,000 clients a site)

    def resolve(timed_out: bool) -> None:
        with lock:
            if not out.done() and (timed_out or left[0] == 0):
                out.set_result(True)
                timer.cancel()  # (fast rounds must not leave a sleeping thread per site per round)

    def one_done(_: Future) -> None:
        with lock:
            left[0] -= 1
        resolve(False)

    timer = threading.Timer(max(0.0, at - time.time()), resolve, args=(True,))
    timer.daemon = True
    timer.start()
    for f in futs:
        f.add_done_callback(one_done)
    resolve(False)
    return out


def submit(drv: Any, rnd: int, number: int, futs: dict[int, tuple[str, Future]], sent: dict[str, Any],
           started: float) -> dict[str, Future]:
    """One aggregation app per site with clients in this round."""
    rs = drv.job.round
    at = started + rs.site_deadline_fraction * rs.deadline_s
    by_site: dict[str, list[int]] = {}
    for c, (site, _) in futs.items():
        by_site.setdefault(site, []).append(c)
    out = {}
    for site, clients in by_site.items():
        if all(futs[c][1].done() and futs[c][1].exception() is not None for c in clients):
            continue  # the site is down or queued: its clients failed at once, and so would its aggregator
        keys = {c: drv.tasks.update_key(rnd, c, number) for c in clients}
        limit = {c: drv.examples_limit(c) for c in clients}
        task = SiteAggTask(site=site, round=rnd, keys=keys, store=drv.tasks.site_store[site], params=sent[site],
                           max_examples=limit, max_norm=rs.max_update_norm, out_store=drv.tasks.area,
                           out_key=f"round-{rnd:06d}/partial-{site}", ref_above=drv.tasks.transfer.ref_above[site])
        out[site] = drv.runtime.aggregate(site, task, _settle([futs[c][1] for c in clients], at))
    return out


def combine(drv: Any, rnd: int, like: Params, g: Gathered, aggs: dict[str, Future],
            until: float) -> tuple[list[ClientUpdate], list[dict[str, Any]]]:
    """The sites' contributions (one per site) and a row per site (clients, examples, bytes that
    stayed in the site and that crossed to the driver, the aggregator's seconds). Clients the
    driver accepted but whose site's partial does not hold them move to `g.failures`."""
    # only the sites with accepted clients are waited for: one that lost its workers mid-round
    # (every client failed) would hold the round to its deadline for an aggregator that cannot run
    needed = {u.site for u in g.updates}
    wait([f for s, f in aggs.items() if s in needed], timeout=max(0.0, until - time.time()))
    contributions, rows = [], []
    for site, fut in sorted(aggs.items()):
        mine = [u for u in g.updates if u.site == site]
        row = {"site": site, "clients": 0, "examples": 0, "bytes_in_site": sum(u.nbytes() for u in mine),
               "bytes_up": 0, "seconds": None}
        rows.append(row)
        for u in mine:
            u.ref = None  # what it sent stayed in its site: its row's bytes_up is 0
        try:  # a partial by reference is read like an update: on a thread, within the round's deadline
            partial = accept_within(lambda _c, _s, p, mine=mine, site=site: _partial(drv, rnd, site, p, mine, like),
                                    -1, site, _answer(fut), until - time.time())
        except Exception as e:  # noqa: BLE001 - one site's loss, never the round's
            _drop(g, mine, f"site aggregator: {e}" if isinstance(e, InvalidUpdate) else
                  f"site aggregator: {type(e).__name__}: {e}")
            continue
        held = set(partial.clients)
        _drop(g, [u for u in mine if u.client not in held], None, partial.left_out)
        if not held:  # every client of the site failed or was left out: no contribution
            continue
        row.update(clients=len(held), examples=partial.examples, seconds=float(partial.seconds),
                   bytes_up=sum(a.nbytes for a in partial.params.values()) if partial.ref is None else
                   partial.ref.nbytes)
        contributions.append(ClientUpdate(client=-1, site=site, round=rnd, num_examples=partial.examples,
                                          params=partial.params))
    return contributions, rows


def _drop(g: Gathered, gone: list[ClientUpdate], why: str | None, left_out: dict[int, str] | None = None) -> None:
    for u in gone:
        g.updates.remove(u)
        reason = why or (left_out or {}).get(u.client) or "not in its site's partial"
        g.failures.append(Failure.of(u.client, u.site, reason))


def _answer(fut: Future) -> Any:
    """The aggregator's answer, if it came within the round (its error is raised)."""
    if not fut.done():
        fut.add_done_callback(lambda f: f.exception())
        raise TimeoutError("no partial within round.deadline_s")
    return fut.result()


def _partial(drv: Any, rnd: int, site: str, p: Any, mine: list[ClientUpdate], like: Params) -> SitePartial:
    """The site's answer, checked against the envelopes the driver accepted from its clients."""
    if not isinstance(p, SitePartial) or p.site != site or p.round != rnd:
        raise InvalidUpdate("rejected: not this site's partial of this round")
    ok = {u.client: u.num_examples for u in mine}
    if not set(p.clients) <= set(ok) or p.examples != sum(ok[c] for c in p.clients):
        raise InvalidUpdate(f"rejected: the partial holds clients {p.clients[:5]} and {p.examples} examples, "
                            "which the clients' own answers do not add up to")
    if p.ref is not None:
        if not isinstance(p.ref, Ref) or drv.tasks.area is None or not inside(p.ref.uri, drv.tasks.area):
            raise InvalidUpdate("rejected: the partial's reference is outside this run's area of the store")
        p.params = dict(fetch(p.ref))
    if p.clients and (list(p.params) != list(like) or any(
            np.shape(p.params[k]) != like[k].shape or not np.isfinite(p.params[k]).all() for k in like)):
        raise InvalidUpdate("rejected: the partial mean does not fit the model or is not finite")
    return p
