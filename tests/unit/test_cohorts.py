"""Cohort tasks on the driver's side (flow/rounds/cohorts.py): how many clients a task carries,
and one future per client resolved from its cohort's answer."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest

from fedgrid.flow.rounds import cohorts


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def test_a_number_is_taken_as_it_is_and_auto_starts_small_until_times_are_known():
    assert cohorts.size(7, _nan(100), 100, 2) == 7
    assert cohorts.size("auto", _nan(10), 10, 2) == 1  # few clients: one task each, as before
    assert cohorts.size("auto", _nan(10_000), 10_000, 2) == cohorts.UNKNOWN


def test_auto_sizes_tasks_to_the_target_from_measured_training_times():
    fast = np.full(10_000, 1e-4)  # clients that take 0.1 ms: hundreds a task
    k = cohorts.size("auto", fast, 10_000, 2)
    assert k == int(cohorts.TARGET_S / (1e-4 + cohorts.PER_CLIENT_S))
    slow = np.full(10_000, 0.5)  # longer than the target: one a task
    assert cohorts.size("auto", slow, 10_000, 2) == 1
    # never fewer than two tasks a worker, so the workers finish together
    assert cohorts.size("auto", np.full(64, 1e-4), 64, 2) == 16
    # few clients a worker: one task each, however quick (each answer as early as it can be)
    assert cohorts.size("auto", np.full(31, 1e-4), 31, 2) == 1


def test_in_a_cohort_a_client_is_ended_at_the_rounds_deadline():
    from fedgrid.apps.cohort import capped
    from fedgrid.apps.guard import Guard

    g = Guard(run="r", limit_s=120.0, limit_key="train.timeout_s")
    assert capped(g, 200.0) is g  # its own limit comes first
    cut = capped(g, 7.04)
    assert cut.limit_s == 7.0 and cut.limit_key == "round.deadline_s: its cohort answers together"
    assert capped(g, -3.0).limit_s == 0.1  # past the deadline already: ended almost at once


def test_split_keeps_order():
    tasks = list(range(7))
    assert cohorts.split(tasks, 3) == [[0, 1, 2], [3, 4, 5], [6]]


def _tasks(*clients: int) -> list:
    return [SimpleNamespace(client=c) for c in clients]


def test_each_client_gets_its_own_answer_or_failure():
    cohort: Future = Future()
    futs = cohorts.per_client(cohort, _tasks(4, 5, 6))
    assert not any(f.done() for f in futs.values())
    cohort.set_result(["u4", ValueError("client 5 broke"), KeyboardInterrupt("from a site")])
    assert futs[4].result() == "u4"
    assert str(futs[5].exception()) == "client 5 broke"
    assert isinstance(futs[6].exception(), RuntimeError)  # never re-raised in the driver as an interrupt


@pytest.mark.parametrize("answer", [["only one"], "not a list"])
def test_a_cohort_that_answers_the_wrong_shape_fails_every_client(answer):
    cohort: Future = Future()
    futs = cohorts.per_client(cohort, _tasks(1, 2))
    cohort.set_result(answer)
    assert all("a cohort task of 2 clients answered" in str(f.exception()) for f in futs.values())


def test_a_lost_cohort_fails_every_client_with_its_reason():
    cohort: Future = Future()
    futs = cohorts.per_client(cohort, _tasks(1, 2))
    cohort.set_exception(ConnectionError("site lost"))
    assert all(isinstance(f.exception(), ConnectionError) for f in futs.values())
