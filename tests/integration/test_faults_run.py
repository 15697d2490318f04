"""Fault drills on real executors: injected failures, a killed worker, a lost site that comes back,
late updates carried into the next round (the rules themselves: tests/unit/test_faults.py)."""

from __future__ import annotations

from fedgrid.flow.config import parse_job


def test_drill_failures_killed_worker_and_lost_site_that_comes_back(tmp_path, make_job) -> None:
    from fedgrid.flow.rounds.runner import run

    rules = [{"fail_p": 0.3}, {"clients": [0], "slowdown": 2},
             {"clients": [1], "raise_at": [2]},
             {"clients": [4], "kill_worker_at": [2]},
             {"site": "b", "lost_from": 3, "lost_until": 5}]
    # (six rounds: two before the loss, the two lost, two after it came back)
    job = parse_job(make_job(tmp_path / "run", rounds=6, faults=rules, round={"min_clients": 2, "deadline_s": 60},
                             train={"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9}))
    rows = run(job, quiet=True).rows
    assert [r["round"] for r in rows] == list(range(1, 7))  # every round completed
    reasons = {r["round"]: {f["client"]: f["reason"] for f in r["failures"]} for r in rows}
    assert "raises at round 2" in reasons[2][1]
    # client 4's worker process died mid-task in round 2; Parsl retried it (a transient cause)
    assert 4 in rows[1]["participants"] and (tmp_path / "run/faults/killed-r000002-c00004").exists()
    w = {r["round"]: {u["client"]: u["worker"] for u in r["updates"]} for r in rows}
    assert w[1].get(4) is None or w[1][4] != w[2][4]
    # site b (clients 3..5) lost in rounds 3-4: noticed and skipped with a reason, never hung on
    for rnd in (3, 4):
        assert all("site down" in reasons[rnd][c] for c in (3, 4, 5))
    # ... and it is back from round 5 (a new block)
    assert all(not any("site down" in x for x in reasons[rnd].values()) for rnd in range(5, 7))
    assert any(c in r["participants"] for r in rows[4:] for c in (3, 4, 5))
    injected = [x for r in reasons.values() for x in r.values() if "fail_p=0.30" in x]
    assert injected and all(r["clients_ok"] >= 2 for r in rows)


def test_late_updates_are_carried_into_the_next_round_with_a_staleness_weight(tmp_path, make_job) -> None:
    from fedgrid.flow.persist.table import read_rows
    from fedgrid.flow.rounds.runner import run

    # threads: lateness and carrying are the driver's, whatever the executor kind
    sites = [{"name": "a", "executor": {"kind": "local", "workers": 3}, "clients": 3},
             {"name": "b", "executor": {"kind": "local", "workers": 2}, "clients": 2},
             {"name": "slow", "executor": {"kind": "local", "workers": 3}, "clients": 1}]  # client 5 alone
    # client 5 holds each answer until the next round has started: late in both rounds for certain,
    # and round 1's arrives while round 2 waits out its 5 s deadline for the next one: carried
    job = parse_job(make_job(tmp_path / "run", rounds=2, sites=sites, faults=[{"clients": [5], "hold_at": [1, 2]}],
                             round={"min_clients": 4, "deadline_s": 5.0, "late": "carry"},
                             train={"epochs": 1, "batch_size": 32, "lr": 0.05}))
    run(job, quiet=True)
    rows = read_rows(tmp_path / "run")
    late = [r["round"] for r in rows if any(f["client"] == 5 and f["reason"].startswith("late") for f in r["failures"])]
    carried = [(r["round"], c["client"], c["staleness"]) for r in rows for c in r["carried"]]
    assert late and carried, (late, carried)
    for rnd, client, stale in carried:
        assert client == 5 and stale >= 1 and rnd - stale in late
        assert 5 in rows[rnd - 1]["participants"]
