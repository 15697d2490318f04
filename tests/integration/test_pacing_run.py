"""Deadline pacing and FedNova in a real run (the step counts by hand: tests/unit/test_pacing.py)."""

from fedgrid.flow.config import parse_job


def test_paced_run_trims_the_slow_site_and_aggregates_with_fednova(tmp_path, make_job):
    from fedgrid.flow.rounds.runner import run

    # threads: pacing is the driver's, whatever the executor kind. Site b's clients take 1 s more
    # than they train (a fixed delay, not a multiple of a training time that a busy machine can
    # stretch for either site): in round 2 every b client is slower than every a client by far
    sites = [{"name": "a", "executor": {"kind": "local", "workers": 3}, "clients": 3},
             {"name": "b", "executor": {"kind": "local", "workers": 3}, "clients": 3}]
    job = parse_job(make_job(tmp_path / "run", rounds=3, strategy={"name": "fednova"}, sites=sites,
                             round={"min_clients": 6, "deadline_s": 120, "pace": "deadline"},
                             train={"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
                             faults=[{"site": "b", "delay_s": 1.0}]))
    rows = run(job, quiet=True).rows
    steps = [{u["client"]: u["steps"] for u in r["updates"]} for r in rows]
    full = steps[0]  # round 1: no profiles yet, everyone does its full work
    assert all(steps[1][c] == full[c] for c in (0, 1, 2))  # the fast site keeps its full work
    assert all(steps[1][c] < full[c] for c in (3, 4, 5))  # the slower site is paced down
    assert rows[-1]["test_accuracy"] > 0.6  # (0.805 with b 6x slower on HTEX; plain FedAvg unpaced: 0.88)
