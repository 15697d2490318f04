"""Deadline-aware selection: which clients are left out, and why, from their profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedgrid.apps.update import Failure
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.clients import selection
from fedgrid.flow.config import parse_job


def _job(make_job, **round_over):
    return parse_job(make_job(Path("/tmp/r"), train={"epochs": 1, "batch_size": 10},
                              round={"min_clients": 1, "deadline_s": 10, "select": "deadline", **round_over}))


def _profiles(seconds: list[float]) -> dict[str, np.ndarray]:
    """Six clients of 100 examples whose full epoch takes `seconds`."""
    p = prof.empty(6)
    p["examples"][:] = 100
    p["samples_per_s"][:] = 100 / np.array(seconds)
    p["last_selected"][:] = 1
    return p


def test_random_selection_is_uniform_and_skips_nobody(make_job) -> None:
    job = _job(make_job, select="random")
    assert selection.select(job, np.random.default_rng(0), prof.empty(6), 1) == ([0, 1, 2, 3, 4, 5], [])
    job.round.fraction = 0.5
    chosen, skipped = selection.select(job, np.random.default_rng(0), prof.empty(6), 1)
    assert len(chosen) == 3 and skipped == []


def test_clients_predicted_past_the_deadline_are_skipped_with_the_reason(make_job) -> None:
    job = _job(make_job)
    p = _profiles([1, 1, 1, 1, 1, 30])  # client 5 needs 30 s for its epoch, the deadline is 10 s
    chosen, skipped = selection.select(job, np.random.default_rng(0), p, 2)
    assert chosen == [0, 1, 2, 3, 4]
    assert skipped == [Failure(5, "b", "predicted 30.0 s > round.deadline_s 10")]
    # pacing may cut it to a quarter of its work (7.5 s): then it fits
    chosen, skipped = selection.select(_job(make_job, pace="deadline", pace_min_fraction=0.25),
                                       np.random.default_rng(0), p, 2)
    assert chosen == [0, 1, 2, 3, 4, 5] and skipped == []


def test_a_site_queue_that_overruns_the_deadline_sheds_its_slowest_clients(make_job) -> None:
    job = _job(make_job)  # site b (clients 3, 4, 5) has one worker: its clients run one after another
    p = _profiles([1, 1, 1, 4, 4, 5])
    chosen, skipped = selection.select(job, np.random.default_rng(0), p, 2)
    assert chosen == [0, 1, 2, 3, 4]  # 4 + 4 = 8 s fit in 10; the 5 s client would end at 13 s
    assert [s.client for s in skipped] == [5] and "site b is full" in skipped[0].reason
    # next round the one that waited goes first: 5 + 4 s fit, the other 4 s client waits
    chosen, skipped = selection.select(job, np.random.default_rng(0), p, 3)
    assert chosen == [0, 1, 2, 3, 5] and [s.client for s in skipped] == [4]


def test_busy_clients_wait_and_skipped_ones_are_explored_again(make_job) -> None:
    job = _job(make_job, explore_after=3)
    p = _profiles([1, 1, 1, 1, 1, 30])
    chosen, skipped = selection.select(job, np.random.default_rng(0), p, 2, busy={0})
    assert 0 not in chosen and Failure(0, "a", "busy: still training an earlier round") in skipped
    assert p["last_selected"][5] == 1 and p["last_selected"][1] == 2
    # client 5 last went in round 1; after sitting out explore_after rounds it is tried again
    assert 5 not in selection.select(job, np.random.default_rng(0), p, 4)[0]
    assert 5 in selection.select(job, np.random.default_rng(0), p, 5)[0]
    assert 5 not in selection.select(job, np.random.default_rng(0), p, 6)[0]  # and then sits out again


def test_unreliable_clients_are_sampled_less_often(make_job) -> None:
    job = _job(make_job, select="deadline", min_clients=1, fraction=0.5)
    p = _profiles([1] * 6)
    p["rounds_ok"][:] = 10
    p["rounds_failed"][0] = 30  # answered 10 of 40 times
    rng = np.random.default_rng(0)
    counts = np.zeros(6)
    for r in range(300):
        for c in selection.select(job, rng, p, 2 + r)[0]:
            counts[c] += 1
    assert counts.sum() == 900
    assert counts[0] < 0.6 * counts[1:].mean()  # picked far less often, but still picked
    assert counts[0] > 0
