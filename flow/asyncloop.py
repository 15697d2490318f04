"""The asynchronous loop (FedBuff): no rounds to wait for; every site's workers stay busy.

Each site holds ``workers x strategy.per_worker`` clients in flight. Whenever one answers, its
site gets another idle client at once, training from the newest global model. Answers go into a
buffer as deltas (new params minus the global the client started from) with their staleness, the
number of server steps taken since that global; when ``strategy.buffer_size`` answers are in, the
strategy takes a server step (flow/strategies/fedbuff.py), and that step is checkpointed, evaluated
and written to the rounds table exactly like a synchronous round, so `status`, `report`, resume
and the crash guarantees are the same. A fast site therefore contributes more often, a slow one
never holds anybody up, and its stale updates count for less.

Failures are recorded per server step with their reason, like a round's. A task that runs past
``round.deadline_s`` is given up (its worker stays counted busy until it ends); a site that loses
its workers has its tasks failed at once and gets new ones when its workers are back. On a driver
crash the tasks in flight are lost, and a resumed run starts new ones from the last checkpoint.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedgrid.apps.update import ClientUpdate
from fedgrid.executors import site_workers
from fedgrid.flow import faults, validate
from fedgrid.flow import profiles as prof
from fedgrid.flow.gather import SITE_DOWN, Gathered, reason_of

if TYPE_CHECKING:
    from fedgrid.flow.runner import _Driver

POLL_S = 0.5


@dataclass
class _Flight:
    client: int
    site: str
    version: int  # the global model (server steps done) it trains from
    started: float
    given_up: bool = False  # past the deadline: its answer is ignored, its worker still busy


def run(drv: _Driver, runtime: Any, done: int, params: dict[str, np.ndarray], params_bytes: int) -> None:
    """Server steps done+1 .. job.rounds; each is handed to the driver's checkpoint writer."""
    from fedgrid.flow.runner import RoundFailed, _row

    job, strat, rng = drv.job, drv.strategy, drv.rng
    opts = strat.opts
    site_clients: dict[str, list[int]] = {}
    for c, s in enumerate(drv.sites):
        site_clients.setdefault(s, []).append(c)
    slots = {s.name: site_workers(s.executor) * opts.per_worker for s in job.sites}
    version = done
    bases: dict[int, dict[str, np.ndarray]] = {version: params}  # globals that flights started from
    sent = drv.outgoing(version + 1, params)
    flights: dict[Future, _Flight] = {}
    buffer: list[ClientUpdate] = []
    failures: list[dict[str, Any]] = []
    step_started, seq, submitted = time.time(), 0, 0
    idle_since: float | None = None
    drv.progress.round_started(version + 1, opts.buffer_size)

    def fail(fl: _Flight, reason: str) -> None:
        failures.append({"client": fl.client, "site": fl.site, "reason": reason})
        prof.failed(drv.profiles, fl.client)
        drv.progress.client_done(fl.client, False)

    while version < job.rounds and not drv.stopping(version):
        drv.check_writes()
        if job.faults:
            runtime.apply_drills(faults.lost_sites(job, version + 1))
        down = runtime.down_sites()
        busy = {fl.client for fl in flights.values()}
        for site, clients in site_clients.items():
            in_flight = sum(1 for fl in flights.values() if fl.site == site)
            idle = [c for c in clients if c not in busy]
            if site in down or not idle:
                continue
            for c in rng.permutation(idle)[:max(0, slots[site] - in_flight)]:
                seq += 1
                fut = runtime.submit(site, {**drv.task(int(c), version + 1, sent[site], None, seq), "draw": [seq]})
                flights[fut] = _Flight(int(c), site, version, time.monotonic())
                submitted += 1
        if not flights:  # every site is down: wait for one to come back, up to a deadline
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > job.round.deadline_s:
                raise RoundFailed(f"step {version + 1}: no site had workers for round.deadline_s="
                                  f"{job.round.deadline_s:g} s ({', '.join(sorted(down))} down); the run stopped "
                                  f"at step {version}; run again to resume once a site is back")
            time.sleep(POLL_S)
            continue
        idle_since = None
        finished, _ = wait(list(flights), timeout=POLL_S, return_when=FIRST_COMPLETED)
        now = time.monotonic()
        for fut, fl in list(flights.items()):
            if fut in finished:
                continue
            if fl.site in down or now - fl.started > 2 * job.round.deadline_s:
                # a lost site, or a task that never ends (a hung worker, a site we cannot see die):
                # stop counting its worker as busy, or the site would never get work again
                flights.pop(fut)
                fut.add_done_callback(lambda f: f.exception())
                if not fl.given_up:
                    fail(fl, SITE_DOWN if fl.site in down else "late: no answer within round.deadline_s")
            elif not fl.given_up and now - fl.started > job.round.deadline_s:
                fl.given_up = True
                fail(fl, f"late: no answer within round.deadline_s={job.round.deadline_s:g}")
        for fut in finished:
            fl = flights.pop(fut)
            if fl.given_up:
                continue
            exc = fut.exception()
            if exc is not None:
                fail(fl, reason_of(exc))
                continue
            try:
                u = validate.check(fut.result().resolve().decode(bases[fl.version]), bases[fl.version],
                                   job.round.max_update_norm)
            except Exception as e:  # noqa: BLE001 - an unreadable or invalid update is this client's failure
                fail(fl, reason_of(e))
                continue
            prof.observe(drv.profiles, u)
            stale = version - fl.version
            if stale > opts.max_staleness:
                fail(fl, f"stale: trained from step {fl.version}, now {version} (max_staleness {opts.max_staleness})")
                continue
            base = bases[fl.version]
            u.params = OrderedDict((k, np.asarray(v) - base[k]) for k, v in u.params.items())
            u.staleness, u.scale = stale, strat.weight(stale)
            prof.answered(drv.profiles, version + 1, fl.client)
            buffer.append(u)
            drv.progress.client_done(fl.client, True)
        if len(buffer) < opts.buffer_size:
            continue
        # exactly buffer_size updates a step (several may arrive at once); the rest wait for the next
        step, buffer = buffer[:opts.buffer_size], buffer[opts.buffer_size:]
        for u in step:  # staleness as of this step (u.round - 1 is the step it trained from)
            u.staleness = version - (u.round - 1)
            u.scale = strat.weight(u.staleness)
        t0 = time.perf_counter()
        params = strat.aggregate(version + 1, params, step, failures)
        agg_s = time.perf_counter() - t0
        version += 1
        bases[version] = params
        for v in [v for v in bases if v < version and all(fl.version != v for fl in flights.values())]:
            del bases[v]
        if version < job.rounds:
            sent = drv.outgoing(version + 1, params)
        g = Gathered(updates=sorted(step, key=lambda u: u.client), failures=failures,
                     seconds=time.time() - step_started)
        info = {"selected": [u.client for u in step] + [f["client"] for f in failures], "attempt": 1}
        row = _row(version, info, g, opts.buffer_size, params_bytes, step_started, agg_s)
        row["bytes_down"] = params_bytes * submitted
        drv.hand_off(version, params, row)
        failures, submitted, step_started = [], 0, time.time()
        if version < job.rounds:
            drv.progress.round_started(version + 1, opts.buffer_size)
    for fut in flights:  # tasks still in flight are not waited for; their outcome is dropped quietly
        fut.add_done_callback(lambda f: f.exception())
