"""Synchronous rounds: select -> train apps on their sites -> tolerant gather -> aggregate -> hand off.

A round that misses its quorum is played again (``round.retries``) with a fresh selection; a
round that misses it on every attempt stops the run at the last good round (RoundFailed). How an
attempt's updates become what the strategy aggregates (every update kept, folded as they arrive,
aggregated at the sites, or masked and unmasked as a sum) is its round mode (flow/rounds/modes).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.clients import pacing, selection
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.privacy.dp import BudgetSpent
from fedgrid.flow.rounds import cohorts, faults, fedeval, modes, validate
from fedgrid.flow.rounds.driver import Driver, Late
from fedgrid.flow.rounds.gather import Gathered, gather
from fedgrid.flow.rounds.modes.base import Futures, Instr
from fedgrid.flow.rounds.outcome import RoundFailed, SiteDown
from fedgrid.flow.rounds.rows import RoundInfo, ref_bytes, round_row

log = logging.getLogger("fedgrid")

Params = dict[str, np.ndarray]


def _failed(exc: BaseException) -> Future:
    fut: Future = Future()
    fut.set_exception(exc)
    return fut


@dataclass
class Attempt:
    """One try at a round: the clients it sent, the quorum it needed, what it gathered."""

    clients: list[int]
    skipped: list[Failure]
    quorum: int
    g: Gathered
    arrived: list[Late]
    mode: modes.RoundMode  # how its updates become what the strategy aggregates

    @property
    def problem(self) -> str | None:
        """A stage of the mode failed (secure aggregation): the attempt fails like a missed quorum."""
        return self.mode.problem

    def ok(self) -> bool:
        return self.problem is None and self.g.quorum_met(self.quorum)


def run_rounds(drv: Driver, done: int, params: Params, params_bytes: int) -> str:
    """Rounds done+1 .. job.rounds, each handed to the writer; returns why it stopped early, or ''."""
    for rnd in range(done + 1, drv.job.rounds + 1):
        if drv.stopping(rnd - 1):
            return "on request"
        drv.writer.check()
        started = time.time()
        if drv.privacy is not None:
            try:
                drv.privacy.check_budget(rnd)
            except BudgetSpent as e:
                drv.progress.say(str(e))
                return "the privacy budget is spent"
        try:
            info, g = play_round(drv, rnd, params)
        except RoundFailed:
            if not drv.stopping(rnd - 1):
                raise
            # a batch scheduler or service manager stops every process of the job at once: the
            # round's workers went with the driver's own signal, and it is the stop, not a failure
            drv.progress.say(f"round {rnd} did not finish: its sites were stopped too")
            return "on request"
        t0 = time.perf_counter()
        contributions = info.contributions(g)
        if drv.privacy is not None:
            drv.privacy.prepare(rnd, params, contributions)
        params = drv.aggregate(rnd, params, contributions, g.failures)
        row = round_row(rnd, info, g, params_bytes, started, time.perf_counter() - t0)
        if fedeval.due(drv, rnd):
            row.update(fedeval.evaluate(drv, rnd, params))
        if drv.privacy is not None:
            drv.privacy.record(row)
        drv.hand_off(rnd, params, row)
        drv.runtime.note_blocks()
    return ""


def play_round(drv: Driver, rnd: int, params: Params) -> tuple[RoundInfo, Gathered]:
    """Round `rnd` up to its aggregation: attempts until one meets its quorum (or RoundFailed)."""
    rs = drv.job.round
    sent = drv.tasks.outgoing(rnd, params)
    if drv.job.faults:
        drv.runtime.apply_drills(faults.lost_sites(drv.job, rnd))
    for number in range(1, rs.retries + 2):
        a = _attempt(drv, rnd, number, params, sent)
        if a.ok():
            _carry(drv, rnd, a.g, a.arrived, params)
            for u in a.g.updates:  # only the updates this round aggregates become their clients' state
                prof.keep_state(drv.profiles, u)
            return RoundInfo(selected=a.clients, attempt=number, ref_down=ref_bytes(sent, drv.sites, a.clients),
                             skipped=a.skipped, reused=_stand_ins(drv, rnd, params, a), mode=a.mode,
                             site_rows=a.mode.site_rows), a.g
        _missed(drv, rnd, number, a)
    raise AssertionError("unreachable: the last attempt raises")


def _attempt(drv: Driver, rnd: int, number: int, params: Params, sent: dict[str, Any]) -> Attempt:
    """One try at round `rnd`: select, instruct, the mode's submit, the gather with the mode's
    accept, the mode's end of it (flow/rounds/modes/base.py has the order and why)."""
    rs = drv.job.round
    clients, skipped = selection.select(drv.job, drv.rng, drv.profiles, rnd, drv.busy())
    if not clients:
        raise RoundFailed(f"round {rnd}: every client was skipped ({skipped[0].reason}, ...); raise "
                          f"round.deadline_s or use round.select: random")
    quorum = min(rs.min_clients, len(clients))
    instr = _instructions(drv, rnd, clients)
    drv.progress.round_started(rnd, len(clients))
    mode = modes.choose(modes.Context(drv, rnd, number, params, sent, instr))
    futs = mode.submit(clients, lambda some: _submit(drv, rnd, number, some, sent, instr))
    g = gather(futs, quorum, rs.deadline_s, mode.observe(drv.progress.client_done), accept=mode.accept,
               down=drv.down, reads=mode.reads)
    mode.gathered(g)
    a = Attempt(clients, skipped, quorum, g, [], mode)
    prof.update(drv.profiles, rnd, g)
    a.arrived = drv.watch_late(rnd, g, params)  # late tasks of a failed attempt keep their clients busy too
    if a.ok():
        mode.confirm(g)
    return a


def _instructions(drv: Driver, rnd: int, clients: list[int]) -> Instr:
    """Each client's extra train settings: the strategy's, and a step budget when the round is paced."""
    instr = drv.strategy.configure(rnd, clients, drv.profiles)
    if drv.job.round.pace == "deadline":
        for c, steps in pacing.assign_steps(drv.job, clients, drv.profiles).items():
            instr.setdefault(c, {})["steps"] = steps
    return instr


def _submit(drv: Driver, rnd: int, number: int, clients: list[int], sent: dict[str, Any],
            instr: Instr) -> Futures:
    """Each client's train task, longest expected first, several clients a task where a site's
    clients are quick (flow/rounds/cohorts.py); a site with no workers fails its clients at once.
    The same for every round mode: the mode's `submit` calls it (as its `send`) for the clients it
    sends, so cohorts work under each mode alike."""
    down = drv.runtime.down_sites()
    until = time.time() + drv.job.round.deadline_s
    order = prof.longest_first(drv.profiles, clients)
    by_site: dict[str, list[int]] = {}
    for c in order:
        by_site.setdefault(drv.sites[c], []).append(c)
    futs: Futures = {}
    for site, mine in by_site.items():
        if site in down:
            futs.update((c, (site, _failed(SiteDown(down[site])))) for c in mine)
            continue
        tasks = [drv.tasks.train(c, rnd, sent[site], instr.get(c), number, prof.state_of(drv.profiles, c))
                 for c in mine]
        k = cohorts.size(drv.site_specs[site].cohort, drv.profiles["train_s"][mine], len(mine),
                         drv.site_workers[site])
        if k == 1:
            futs.update((t.client, (site, drv.runtime.submit(site, t))) for t in tasks)
            continue
        groups = cohorts.split(tasks, k)
        log.info("round %d: site %s: %d clients in %d task(s)", rnd, site, len(tasks), len(groups))
        for group in groups:
            got = cohorts.per_client(drv.runtime.cohort(site, group, until), group)
            futs.update((c, (site, f)) for c, f in got.items())
    return {c: futs[c] for c in order}


def _missed(drv: Driver, rnd: int, number: int, a: Attempt) -> None:
    """Say why the attempt failed; raise RoundFailed after the last one."""
    rs = drv.job.round
    if a.problem is not None:
        a.g.failures.append(Failure.of(-1, "driver", a.problem))
    reasons = "; ".join(f"client {f.client}@{f.site}: {f.reason}" for f in a.g.failures[:5])
    msg = (f"round {rnd} attempt {number}: {len(a.g.updates)} of {len(a.clients)} clients answered, "
           f"quorum is {a.quorum} ({reasons})")
    drv.progress.say(msg)
    if number > rs.retries or drv.stop_requested:  # stopping: no attempt again
        raise RoundFailed(f"{msg}; gave up after {rs.retries} retr{'y' if rs.retries == 1 else 'ies'}. "
                          f"The run stopped at round {rnd - 1}; fix the failing sites and run again to resume")


def _stand_ins(drv: Driver, rnd: int, params: Params, a: Attempt) -> list[ClientUpdate]:
    """round.absent=reuse: the last update of each selected client that did not answer."""
    if drv.job.round.absent != "reuse":
        return []
    drv.memory.remember(rnd, params, a.g.updates)
    answered = {u.client for u in a.g.updates}
    return drv.memory.stand_ins(rnd, params, [c for c in a.clients if c not in answered], drv.sites)


def _carry(drv: Driver, rnd: int, g: Gathered, arrived: list[Late], g_params: Params) -> None:
    """round.late=carry: late updates that have arrived join this round, weighted by
    (1 + staleness) ** -staleness_exponent, up to max_staleness rounds late."""
    rs = drv.job.round
    if rs.late != "carry":
        return
    fresh = {u.client for u in g.updates}
    for late in arrived:
        stale = rnd - late.round
        if late.client in fresh or stale > rs.max_staleness:
            continue
        try:
            # (its paced budget is gone with its round: at most the most pacing could have given) and
            # the norm bound applies to its update from the model it trained from, not from this one
            most = math.ceil(drv.job.train.epochs * rs.pace_max_fraction)
            u = validate.accept(late.future.result(), late.client, drv.sites[late.client], late.round,
                                late.base if late.base is not None else g_params, drv.tasks.area, rs.max_update_norm,
                                validate.step_budget(most, drv.job.train.batch_size))
        except Exception as e:  # noqa: BLE001 - a carried update that cannot be read is dropped
            log.warning("round %d: carried update of client %d dropped: %s", rnd, late.client, e)
            continue
        u.staleness, u.scale = stale, (1.0 + stale) ** -rs.staleness_exponent
        g.updates.append(u)
        fresh.add(late.client)
    g.updates.sort(key=lambda u: u.client)
