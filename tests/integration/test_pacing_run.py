"""Deadline pacing and FedNova in a real run (the step counts by hand: tests/unit/test_pacing.py)."""

from fedgrid.flow.config import parse_job


def test_paced_run_trims_the_slow_site_and_aggregates_with_fednova(tmp_path, make_job):
    from fedgrid.flow.rounds.runner import run

    job = parse_job(make_job(tmp_path / "run", rounds=3, strategy={"name": "fednova"},
                             round={"min_clients": 6, "deadline_s": 120, "pace": "deadline"},
                             train={"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
                             faults=[{"site": "b", "slowdown": 6}]))
    rows = run(job, quiet=True).rows
    steps = [{u["client"]: u["steps"] for u in r["updates"]} for r in rows]
    full = steps[0]  # round 1: no profiles yet, everyone does its full work
    assert all(steps[1][c] == full[c] for c in (0, 1, 2))  # the fast site keeps its full work
    assert all(steps[1][c] < full[c] for c in (3, 4, 5))  # the x6-slower site is paced down
    assert rows[-1]["test_accuracy"] > 0.6  # (0.805 here; plain FedAvg unpaced: 0.88)
