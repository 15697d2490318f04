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
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.executors import site_workers
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.rounds import faults, validate
from fedgrid.flow.rounds.driver import Driver
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.rounds.outcome import RoundFailed
from fedgrid.flow.rounds.rows import RoundInfo, round_row
from fedgrid.flow.strategies.fedbuff import FedBuff

POLL_S = 0.5

Params = dict[str, np.ndarray]


@dataclass
class _Flight:
    client: int
    site: str
    version: int  # the global model (server steps done) it trains from
    started: float
    given_up: bool = False  # past the deadline: its answer is ignored, its worker still busy


@dataclass
class _Step:
    """What the server step in progress has collected so far."""

    started: float = field(default_factory=time.time)
    failures: list[Failure] = field(default_factory=list)
    submitted: int = 0


class AsyncLoop:
    """FedBuff's loop over one run: keep every site's slots full, buffer the answers, step."""

    def __init__(self, drv: Driver, done: int, params: Params, params_bytes: int):
        # (only an asynchronous strategy gets here: FedBuff's options and staleness weight)
        self.strat = cast(FedBuff, drv.strategy)
        self.drv, self.job, self.opts = drv, drv.job, self.strat.opts
        self.params, self.params_bytes, self.version = params, params_bytes, done
        self.site_clients: dict[str, list[int]] = {}
        for c, s in enumerate(drv.sites):
            self.site_clients.setdefault(s, []).append(c)
        self.slots = {s.name: site_workers(s.executor) * self.opts.per_worker for s in self.job.sites}
        self.bases: dict[int, Params] = {done: params}  # globals that flights started from
        self.sent = drv.tasks.outgoing(done + 1, params)
        self.flights: dict[Future, _Flight] = {}
        self.buffer: list[ClientUpdate] = []
        self.step = _Step()
        self.draws = 0  # tasks submitted so far: each one's draw, so two flights of a client differ

    def run(self) -> None:
        """Server steps done+1 .. job.rounds; each is handed to the driver's checkpoint writer."""
        drv, deadline = self.drv, self.job.round.deadline_s
        idle_since: float | None = None
        drv.progress.round_started(self.version + 1, self.opts.buffer_size)
        try:
            while self.version < self.job.rounds and not drv.stopping(self.version):
                drv.writer.check()
                if self.job.faults:
                    drv.runtime.apply_drills(faults.lost_sites(self.job, self.version + 1))
                down = drv.runtime.down_sites()
                self._fill(down)
                if not self.flights:  # every site is down: wait for one to come back, up to a deadline
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > deadline:
                        raise RoundFailed(f"step {self.version + 1}: no site had workers for round.deadline_s="
                                          f"{deadline:g} s ({', '.join(sorted(down))} down); the run stopped at "
                                          f"step {self.version}; run again to resume once a site is back")
                    time.sleep(POLL_S)
                    continue
                idle_since = None
                finished, _ = wait(list(self.flights), timeout=POLL_S, return_when=FIRST_COMPLETED)
                self._expire(finished, down)
                for fut in finished:
                    self._collect(fut)
                if len(self.buffer) >= self.opts.buffer_size:
                    self._server_step()
        finally:
            for fut in self.flights:  # tasks still in flight are not waited for; their outcome is dropped quietly
                fut.add_done_callback(lambda f: f.exception())

    def _fail(self, fl: _Flight, why: BaseException | str) -> None:
        self.step.failures.append(Failure.of(fl.client, fl.site, why))
        prof.failed(self.drv.profiles, fl.client)
        self.drv.progress.client_done(fl.client, False)

    def _fill(self, down: dict[str, str]) -> None:
        """Give every site with a free slot idle clients, training from the newest global model."""
        # a client whose update waits in the buffer is not sent again: its next flight must start from
        # the state that update leaves, which becomes its state only at the server step that uses it
        busy = {fl.client for fl in self.flights.values()} | {u.client for u in self.buffer}
        for site, clients in self.site_clients.items():
            in_flight = sum(1 for fl in self.flights.values() if fl.site == site)
            idle = [c for c in clients if c not in busy]
            if site in down or not idle:
                continue
            for c in self.drv.rng.permutation(idle)[:max(0, self.slots[site] - in_flight)]:
                self.draws += 1
                task = self.drv.tasks.train(int(c), self.version + 1, self.sent[site], None, self.draws,
                                            prof.state_of(self.drv.profiles, int(c)))
                fut = self.drv.runtime.submit(site, replace(task, draw=(self.draws,)))
                self.flights[fut] = _Flight(int(c), site, self.version, time.monotonic())
                self.step.submitted += 1

    def _expire(self, finished: set[Future], down: dict[str, str]) -> None:
        """Give up tasks past the deadline; forget ones that will never end (a lost site, a hung
        worker) so their site's slot is free again. `down`: site -> why (SiteRuntime.down_sites)."""
        deadline, now = self.job.round.deadline_s, time.monotonic()
        for fut, fl in list(self.flights.items()):
            if fut in finished:
                continue
            if fl.site in down or now - fl.started > 2 * deadline:
                self.flights.pop(fut)
                fut.add_done_callback(lambda f: f.exception())
                if not fl.given_up:
                    self._fail(fl, down.get(fl.site, "late: no answer within round.deadline_s"))
            elif not fl.given_up and now - fl.started > deadline:
                fl.given_up = True
                self._fail(fl, f"late: no answer within round.deadline_s={deadline:g}")

    def _collect(self, fut: Future) -> None:
        """A finished flight: checked, turned into its delta and buffered, or recorded as failed."""
        fl = self.flights.pop(fut)
        if fl.given_up:
            return
        if (exc := fut.exception()) is not None:
            self._fail(fl, exc)
            return
        base = self.bases[fl.version]
        try:
            tr, rs = self.job.train, self.job.round
            u = validate.accept(fut.result(), fl.client, fl.site, fl.version + 1, base, self.drv.tasks.area,
                                rs.max_update_norm, validate.step_budget(tr.epochs, tr.batch_size),
                                self.drv.examples_limit(fl.client))
        except Exception as e:  # noqa: BLE001 - an unreadable or invalid update is this client's failure
            self._fail(fl, e)
            return
        prof.observe(self.drv.profiles, u)
        stale = self.version - fl.version
        if stale > self.opts.max_staleness:
            self._fail(fl, f"stale: trained from step {fl.version}, now {self.version} "
                           f"(max_staleness {self.opts.max_staleness})")
            return
        u.params = OrderedDict((k, np.asarray(v) - base[k]) for k, v in u.params.items())
        u.staleness, u.scale = stale, self.strat.weight(stale)
        prof.answered(self.drv.profiles, self.version + 1, fl.client)
        self.buffer.append(u)
        self.drv.progress.client_done(fl.client, True)

    def _server_step(self) -> None:
        """Exactly buffer_size updates a step (several may arrive at once); the rest wait for the next."""
        size = self.opts.buffer_size
        batch, self.buffer = self.buffer[:size], self.buffer[size:]
        for u in batch:  # in this step: its state is its client's now (and in this step's checkpoint)
            prof.keep_state(self.drv.profiles, u)
        for u in batch:  # staleness as of this step (u.round - 1 is the step it trained from)
            u.staleness = self.version - (u.round - 1)
            u.scale = self.strat.weight(u.staleness)
        t0 = time.perf_counter()
        self.params = self.drv.aggregate(self.version + 1, self.params, batch, self.step.failures)
        agg_s = time.perf_counter() - t0
        self.version += 1
        self.bases[self.version] = self.params
        for v in [v for v in self.bases if v < self.version and all(fl.version != v for fl in self.flights.values())]:
            del self.bases[v]
        if self.version < self.job.rounds:
            self.sent = self.drv.tasks.outgoing(self.version + 1, self.params)
        st = self.step
        g = Gathered(updates=sorted(batch, key=lambda u: u.client), failures=st.failures,
                     seconds=time.time() - st.started)
        info = RoundInfo(selected=[u.client for u in batch] + [f.client for f in st.failures])
        row = round_row(self.version, info, g, self.params_bytes, st.started, agg_s)
        row["bytes_down"] = self.params_bytes * st.submitted
        self.drv.hand_off(self.version, self.params, row)
        self.drv.runtime.note_blocks()
        self.step = _Step()
        if self.version < self.job.rounds:
            self.drv.progress.round_started(self.version + 1, size)


def run(drv: Driver, done: int, params: Params, params_bytes: int) -> None:
    """Server steps done+1 .. job.rounds (see AsyncLoop)."""
    AsyncLoop(drv, done, params, params_bytes).run()
