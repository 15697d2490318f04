"""Deadline-aware pacing: size each client's local work so the selected clients finish together.

In the manner of FedCompass (Li et al., 2024): a client's speed is learned from its profile
(samples per second, an EMA that includes its queueing site's slowness), the round gets a target
time — a quantile of the selected clients' times for their full work (``train.epochs`` over their
shard) — and each client gets as many local steps as fit in it, between ``pace_min_fraction`` and
``pace_max_fraction`` times its full work. Stragglers are trimmed, and clients that would
otherwise sit idle until the round's end train longer instead (FedCompass's Q_max), which is
where the wall-clock gain comes from; FedNova (``strategy: fednova``) then normalises the unequal
step counts. Clients without a profile yet (round 1) do their full work.
"""

from __future__ import annotations

import math

import numpy as np

from fedgrid.executors import site_workers
from fedgrid.flow.config import Job


def assign_steps(job: Job, clients: list[int], profiles: dict[str, np.ndarray]) -> dict[int, int]:
    bs, epochs, rs = job.train.batch_size, job.train.epochs, job.round
    rate = profiles["samples_per_s"][clients]
    n = profiles["examples"][clients]
    known = ~np.isnan(rate) & (n > 0) & (rate > 0)
    if not known.any():
        return {}
    # a client's share of the round's wall time: its full work, times how many selected clients
    # queue for each worker of its site (a site's workers take its clients one after another)
    site_of = job.client_sites()
    per_site: dict[str, int] = {}
    for c in clients:
        per_site[site_of[c]] = per_site.get(site_of[c], 0) + 1
    load = np.array([per_site[site_of[c]] / _workers(job, site_of[c]) for c in clients], dtype=np.float64)
    share = np.where(known, epochs * n / np.where(known, rate, 1.0) * np.maximum(load, 1.0), np.nan)
    target = float(np.nanquantile(share, rs.pace_quantile))
    out = {}
    for i, c in enumerate(clients):
        if not known[i]:
            continue
        full = epochs * math.ceil(n[i] / bs)
        least, most = bounds(job, int(n[i]))
        out[c] = int(min(most, max(least, round(full * target / share[i]))))
    return out


def bounds(job: Job, examples: int) -> tuple[int, int]:
    """The fewest and the most local steps pacing may give a client with this many examples."""
    full = job.train.epochs * math.ceil(examples / job.train.batch_size)
    return (max(1, math.ceil(job.round.pace_min_fraction * full)),
            max(1, math.floor(job.round.pace_max_fraction * full)))


def _workers(job: Job, site: str) -> int:
    return site_workers(job.site(site).executor)
