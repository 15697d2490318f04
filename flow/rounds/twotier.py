"""``round.aggregate: site`` — the driver's half of two-tier aggregation.

Per site and round the DAG gets one aggregation app (apps/siteagg.py) on the site's executor. Its
input is a future (`Settle`) the driver resolves once it has checked the answer of every client of
the site, or at the site's deadline (``round.site_deadline_fraction`` of the round's), whichever is
first: Parsl starts the aggregator then, on a worker the clients no longer need, and hands it what
the driver accepted (each client's example count and steps), so the site weighs by the driver's
own records. The clients' updates stay in the site's store; only their envelopes (counts, metrics,
timings) and one partial per site come to the driver.

The driver checks every envelope as in flat rounds and every partial against them: the partial's
clients must be clients whose answers the driver accepted, its example count their sum, its mean
finite and shaped like the model. A site whose aggregator fails, is late or does not add up costs
that site's clients for the round, never the round. Each partial becomes one contribution that the
strategy combines as it would combine the clients (`contribution`): the site's mean weighted by
its examples for the mean-based rules; for FedNova also the site's sums of n_i / tau_i and
n_i * tau_i (from the driver's records); for SCAFFOLD the site's mean control delta and its
clients' variate references; under DP one weight per client, the noise added here by
flow/privacy/dp.py; under secure aggregation the masked sum, unmasked per site by
flow/privacy/secagg.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from fedgrid.apps import checks
from fedgrid.apps.checks import InvalidUpdate, inside, seconds
from fedgrid.apps.records import Extras, SiteRow
from fedgrid.apps.siteagg import CONTROL, MASKED, SiteAggTask, SitePartial, weight
from fedgrid.apps.store import Ref, fetch
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.rounds import fold
from fedgrid.flow.rounds.gather import Gathered, accept_within

if TYPE_CHECKING:
    from fedgrid.flow.rounds.tasks import Tasks

Params = dict[str, np.ndarray]


class SiteApps(Protocol):
    """The Parsl side a two-tier round needs (flow/rounds/sites.py SiteRuntime)."""

    def aggregate(self, site: str, task: SiteAggTask, settled: Future) -> Future: ...


class SiteDriver(fold.FoldDriver, Protocol):
    """What two-tier aggregation reads of the run's driver (flow/rounds/driver.py Driver): the
    fold's view of it, and the tasks (the sites' stores, update keys, the transfer plan) and the
    sites' aggregation apps."""

    @property
    def tasks(self) -> Tasks: ...

    @property
    def runtime(self) -> SiteApps: ...


class Settle:
    """One site's "its clients are checked" future. It resolves, with {client: (examples, steps)}
    of the clients the driver accepted, when every client of the site is done (`done`: answered
    and checked, or failed) or at time `at`, whichever is first; later acceptances are not in it."""

    def __init__(self, clients: list[int], at: float):
        self.future: Future = Future()
        self._left = set(clients)  # a set, not a scan of every future per answer (1,000 clients a site)
        self._accepted: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._resolved = False
        self._timer = threading.Timer(max(0.0, at - time.time()), self.resolve)
        self._timer.daemon = True
        self._timer.start()
        if not clients:
            self.resolve()

    def accept(self, u: ClientUpdate) -> None:
        with self._lock:
            if not self._resolved:
                self._accepted[u.client] = (int(u.num_examples), _steps(u))

    def done(self, client: int) -> None:
        with self._lock:
            self._left.discard(client)
            last = not self._left
        if last:
            self.resolve()

    def resolve(self) -> None:
        with self._lock:
            if self._resolved:
                return
            self._resolved = True
            value = dict(self._accepted)
        self._timer.cancel()  # (fast rounds must not leave a sleeping thread per site per round)
        self.future.set_result(value)  # outside the lock: Parsl launches the aggregator from this call


class SiteRound:
    """A round's site aggregators: their futures, and the hooks the gather feeds (`accepted` on
    each checked answer, `observe` wrapping its per-client callback)."""

    def __init__(self, sites: dict[int, str], settles: dict[str, Settle], aggs: dict[str, Future]):
        self.sites, self.settles, self.aggs = sites, settles, aggs

    def accepted(self, u: ClientUpdate) -> None:
        if (s := self.settles.get(u.site)) is not None:
            s.accept(u)

    def observe(self, then: Callable[[int, bool], None]) -> Callable[[int, bool], None]:
        def on_result(client: int, ok: bool) -> None:
            if (s := self.settles.get(self.sites[client])) is not None:
                s.done(client)
            then(client, ok)
        return on_result

    def close(self) -> None:
        """The gather is over: whatever was accepted is all there will be."""
        for s in self.settles.values():
            s.resolve()


def weighing(drv: fold.FoldDriver) -> Literal["examples", "steps", "equal"]:
    """How a site weighs its clients for this run: one per client under DP (as the driver does in
    flat rounds), else the strategy's rule."""
    if drv.privacy is not None:
        return "equal"
    # (a rule without site weights is refused with round.aggregate: site by the job's check)
    return "steps" if drv.strategy.site_weights() == "steps" else "examples"


def submit(drv: SiteDriver, rnd: int, number: int, futs: dict[int, tuple[str, Future]], sent: dict[str, Any],
           started: float) -> SiteRound:
    """One aggregation app per site with clients in this round."""
    rs = drv.job.round
    at = started + rs.site_deadline_fraction * rs.deadline_s
    by_site: dict[str, list[int]] = {}
    for c, (site, _) in futs.items():
        by_site.setdefault(site, []).append(c)
    settles: dict[str, Settle] = {}
    aggs: dict[str, Future] = {}
    for site, clients in by_site.items():
        if all(futs[c][1].done() and futs[c][1].exception() is not None for c in clients):
            continue  # the site is down or queued: its clients failed at once, and so would its aggregator
        settles[site] = Settle(clients, at)
        task = SiteAggTask(site=site, round=rnd, keys={c: drv.tasks.update_key(rnd, c, number) for c in clients},
                           store=drv.tasks.site_store[site], params=sent[site], weigh=weighing(drv),
                           clip=drv.job.privacy.clip if drv.job.privacy and drv.job.privacy.mode == "central" else None,
                           control="scaffold" in drv.strategy.needs,
                           masked=drv.secagg.size(rnd) if drv.secagg is not None else 0,
                           max_norm=rs.max_update_norm, out_store=drv.tasks.area,
                           out_key=f"round-{rnd:06d}/partial-{site}", ref_above=drv.tasks.transfer.ref_above[site])
        aggs[site] = drv.runtime.aggregate(site, task, settles[site].future)
    return SiteRound({c: s for c, (s, _) in futs.items()}, settles, aggs)


def combine(drv: SiteDriver, rnd: int, like: Params, g: Gathered, sr: SiteRound,
            until: float) -> tuple[list[ClientUpdate], list[SiteRow]]:
    """The sites' contributions (one per site) and a row per site (clients, examples, bytes that
    stayed in the site and that crossed to the driver, the aggregator's seconds). Clients the
    driver accepted but whose site's partial does not hold them move to `g.failures`."""
    # only the sites with accepted clients are waited for: one that lost its workers mid-round
    # (every client failed) would hold the round to its deadline for an aggregator that cannot run
    needed = {u.site for u in g.updates}
    wait([f for s, f in sr.aggs.items() if s in needed], timeout=max(0.0, until - time.time()))
    partials: list[tuple[SitePartial, list[ClientUpdate]]] = []
    rows: list[SiteRow] = []
    spills: dict[str, fold.Spill] = {}  # folded rounds: the partials read by reference, verified
    for site, fut in sorted(sr.aggs.items()):
        mine = [u for u in g.updates if u.site == site]
        row: SiteRow = {"site": site, "clients": 0, "examples": 0, "bytes_in_site": sum(u.nbytes() for u in mine),
                        "bytes_up": 0, "seconds": None}
        rows.append(row)
        for u in mine:
            u.ref = None  # what it sent stayed in its site: its row's bytes_up is 0

        # (mine and site bound here: a read still running past the deadline keeps its own site's)
        def read(_c: int, _s: str, p: Any, mine: list[ClientUpdate] = mine, site: str = site) -> SitePartial:
            return _partial(drv, rnd, site, p, mine, like, spills)

        try:  # a partial by reference is read like an update: on a thread, within the round's deadline
            partial = accept_within(read, -1, site, _answer(fut), until - time.time())
        except Exception as e:  # noqa: BLE001 - one site's loss, never the round's
            _drop(g, mine, f"site aggregator: {e}" if isinstance(e, InvalidUpdate) else
                  f"site aggregator: {type(e).__name__}: {e}")
            continue
        held = set(partial.clients)
        _drop(g, [u for u in mine if u.client not in held], None, partial.left_out)
        if not held:  # every client of the site failed or was left out: no contribution
            continue
        row.update({"clients": len(held), "examples": partial.examples, "seconds": _seconds(partial.seconds),
                    "bytes_up": sum(a.nbytes for a in partial.params.values()) if partial.ref is None else
                    partial.ref.nbytes})
        partials.append((partial, [u for u in mine if u.client in held]))
    if drv.secagg is not None:
        return _unmasked(drv, rnd, like, g, partials), rows
    if fold.applies(drv):  # one contribution: the driver holds one sum, not every site's partial
        return ([fold.sites(like, rnd, [(contribution(drv, p, held), spills.get(p.site)) for p, held in partials])]
                if partials else []), rows
    return [contribution(drv, p, held) for p, held in partials], rows


def contribution(drv: fold.FoldDriver, p: SitePartial, held: list[ClientUpdate]) -> ClientUpdate:
    """One site's partial as the strategy takes it, its weights from the driver's own records of
    `held` (the clients in it): the same sums the strategy would form over those clients."""
    params = {k: v for k, v in p.params.items() if not k.startswith(CONTROL)}
    extras: Extras = {"clients": len(held)}
    steps = [_steps(u) for u in held]
    if drv.strategy.site_weights() == "steps":  # FedNova: sum n_i / tau_i and sum n_i * tau_i
        extras["nova"] = (sum(weight("steps", u.num_examples, s) for u, s in zip(held, steps, strict=True)),
                          float(sum(u.num_examples * s for u, s in zip(held, steps, strict=True))))
    if "scaffold" in drv.strategy.needs:
        extras["scaffold_mean"] = {k[len(CONTROL):]: v for k, v in p.params.items() if k.startswith(CONTROL)}
        extras["scaffold_clients"] = [u.client for u in held]
    n = len(held) if weighing(drv) == "equal" else p.examples
    return ClientUpdate(client=-1, site=p.site, round=p.round, num_examples=n, params=params, extras=extras)


def _unmasked(drv: SiteDriver, rnd: int, like: Params, g: Gathered,
              partials: list[tuple[SitePartial, list[ClientUpdate]]]) -> list[ClientUpdate]:
    """Secure aggregation: each site's masked sum unmasked (one unmasking stage for all sites);
    a site whose masks cannot be removed costs its clients."""
    assert drv.secagg is not None
    sums = {p.site: (p.params[MASKED], [u.client for u in held]) for p, held in partials}
    out, lost = drv.secagg.unmask_sites(rnd, sums, like, g.failures)
    for site, why in lost.items():
        _drop(g, [u for u in g.updates if u.site == site], f"secagg: {why}")
    return out


def _steps(u: ClientUpdate) -> int:
    """A client's local steps as the driver accepted them (at least 1: FedNova divides by them)."""
    return max(int(u.extras.get("steps") or 1), 1)


def _seconds(v: Any) -> float | None:
    """The aggregator's own timing, as the site says it: kept only if it is a valid timing."""
    try:
        return seconds("site aggregator seconds", v)
    except InvalidUpdate:
        return None


def _drop(g: Gathered, gone: list[ClientUpdate], why: str | None, left_out: dict[int, str] | None = None) -> None:
    for u in gone:
        g.updates.remove(u)
        said = left_out.get(u.client) if isinstance(left_out, dict) else None  # the site's word: untrusted
        reason = why or (said[:300] if isinstance(said, str) and said else "not in its site's partial")
        g.failures.append(Failure.of(u.client, u.site, reason))


def _answer(fut: Future) -> Any:
    """The aggregator's answer, if it came within the round (its error is raised)."""
    if not fut.done():
        fut.add_done_callback(lambda f: f.exception())
        raise TimeoutError("no partial within round.deadline_s")
    return fut.result()


def _partial(drv: SiteDriver, rnd: int, site: str, p: Any, mine: list[ClientUpdate], like: Params,
             spills: dict[str, fold.Spill]) -> SitePartial:
    """The site's answer, checked against the envelopes the driver accepted from its clients, its
    params by the shared rules (apps/checks.py) for a site's partial."""
    if not isinstance(p, SitePartial) or p.site != site or p.round != rnd:
        raise InvalidUpdate("rejected: not this site's partial of this round")
    ok = {u.client: u.num_examples for u in mine}
    if not isinstance(p.clients, list) or not set(p.clients) <= set(ok) or len(set(p.clients)) != len(p.clients) \
            or p.examples != sum(ok[c] for c in p.clients):
        raise InvalidUpdate(f"rejected: the partial holds clients {str(p.clients)[:40]} and {p.examples!r} examples, "
                            "which the clients' own answers do not add up to")
    if p.ref is not None:
        if not isinstance(p.ref, Ref) or drv.tasks.area is None or not inside(p.ref.uri, drv.tasks.area):
            raise InvalidUpdate("rejected: the partial's reference is outside this run's area of the store")
        if fold.applies(drv):  # checked as it is read, into a private spill; folded from there
            p.params, spills[site] = {}, fold.Spill(p.ref, checks.Rules(like, partial=True))
            return p
        p.params = dict(fetch(p.ref))
    if p.clients:
        if drv.secagg is not None:
            checks.masked(p.params, drv.secagg.size(rnd))
        else:
            checks.Rules(_expected(drv, like), partial=True).params(p.params)
    return p


def _expected(drv: fold.FoldDriver, like: Params) -> Params:
    """The tensors a partial of this run carries, in order: the model's, and SCAFFOLD's mean
    control delta beside each float tensor."""
    if "scaffold" not in drv.strategy.needs:
        return like
    return {**like, **{CONTROL + k: v for k, v in like.items() if np.issubdtype(v.dtype, np.floating)}}
