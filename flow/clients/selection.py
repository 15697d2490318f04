"""Which clients train this round: a random sample, or one that avoids likely stragglers.

`round.select: random` samples ``clients_per_round`` clients uniformly (Flower's default).

`round.select: deadline` uses the clients' profiles (flow/clients/profiles.py) to leave out clients that
would not answer before ``round.deadline_s`` anyway, so a round neither waits on them nor loses
their quorum share, and their sites' workers go to clients that can finish:

1. a client whose predicted training time for its least work (``pace_min_fraction`` of its full
   work when pacing, else its full work) is over the deadline is skipped;
2. a client still busy with an earlier round's task (a late one, still running) is skipped;
3. the sample is drawn with weights equal to each client's record of answering (so flaky clients
   are picked less often, but still picked);
4. each site's picked clients are laid onto its workers (at the same predicted work), those that
   have waited longest since they last trained first (so a site that can only take a few clients a
   round rotates through all of them); those whose predicted finish would fall after the deadline
   are skipped. This is where queueing is modelled: a site with one worker and many clients runs
   them one after another. With pacing on, only what cannot fit even at its least work is shed,
   and pacing then sizes the chosen clients' work to the round.

A client skipped as too slow is tried again once it has sat out ``explore_after`` rounds, since its
site may have become faster, and clients never seen are always eligible. Every skip is recorded with its
reason in the rounds table.
"""

from __future__ import annotations

import heapq

import numpy as np

from fedgrid.apps.update import Failure
from fedgrid.executors import site_workers
from fedgrid.flow.clients import pacing
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.config import Job


def select(job: Job, rng: np.random.Generator, p: dict[str, np.ndarray], rnd: int,
           busy: set[int] | None = None) -> tuple[list[int], list[Failure]]:
    """The clients of round `rnd`, and the ones left out with a reason."""
    n, k = job.data.clients, min(job.clients_per_round(), job.data.clients)
    if job.round.select == "random":
        if k >= n:
            return list(range(n)), []
        return sorted(int(c) for c in rng.choice(n, size=k, replace=False)), []
    sites = job.client_sites()
    need = predicted_s(job, p, least=job.round.pace == "deadline")
    deadline = job.round.deadline_s
    skipped: dict[int, str] = {}
    exploring: set[int] = set()  # too slow by its profile, but the profile is old: try it again
    for c in range(n):
        if busy and c in busy:
            skipped[c] = "busy: still training an earlier round"
        elif need[c] > deadline and rnd - p["last_selected"][c] > job.round.explore_after:
            exploring.add(c)
        elif need[c] > deadline:
            skipped[c] = f"predicted {need[c]:.1f} s > round.deadline_s {deadline:g}"
    pool = [c for c in range(n) if c not in skipped]
    if len(pool) > k:
        w = prof.reliability(p, pool)
        picked = sorted(int(c) for c in rng.choice(pool, size=k, replace=False, p=w / w.sum()))
    else:
        picked = pool
    for c, why in _over_capacity(job, picked, need, sites, p, exploring).items():
        skipped[c] = why
    chosen = [c for c in picked if c not in skipped]
    for c in chosen:
        p["last_selected"][c] = rnd
    return chosen, [Failure.of(c, sites[c], r) for c, r in sorted(skipped.items())]


def predicted_s(job: Job, p: dict[str, np.ndarray], least: bool) -> np.ndarray:
    """Seconds of training each client needs for its full work, or (`least`) for the least work
    pacing may give it (NaN: never seen)."""
    rate, n = p["samples_per_s"], p["examples"]
    out = np.full(len(rate), np.nan)
    for c in np.flatnonzero(~np.isnan(rate) & (rate > 0) & (n > 0)):
        full = job.train.epochs * n[c]
        out[c] = (min(pacing.bounds(job, int(n[c]))[0] * job.train.batch_size, full) if least else full) / rate[c]
    return out


def _over_capacity(job: Job, picked: list[int], need: np.ndarray, sites: list[str],
                   p: dict[str, np.ndarray], exploring: set[int]) -> dict[int, str]:
    """Clients whose turn on their site's workers would end after the deadline. A client being
    explored is never shed, but holds a worker for the whole round (it is expected to be late)."""
    out: dict[int, str] = {}
    by_site: dict[str, list[int]] = {}
    for c in picked:
        if not np.isnan(need[c]):
            by_site.setdefault(sites[c], []).append(c)
    for site, cs in by_site.items():
        workers = [0.0] * site_workers(job.site(site).executor)
        for c in cs:
            if c in exploring:
                heapq.heapreplace(workers, job.round.deadline_s)
        cs = [c for c in cs if c not in exploring]
        for c in sorted(cs, key=lambda c: (p["last_selected"][c], need[c])):  # longest waiting, then fastest
            start = heapq.heappop(workers)
            finish = start + float(need[c])
            if finish > job.round.deadline_s:
                out[c] = (f"site {site} is full: predicted to finish at {finish:.1f} s > round.deadline_s "
                          f"{job.round.deadline_s:g}")
                heapq.heappush(workers, start)
            else:
                heapq.heappush(workers, finish)
    return out
