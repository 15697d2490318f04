"""Deadline-aware selection in a real run: a site too slow for the deadline is learned and left out."""

from __future__ import annotations

from fedgrid.flow.config import parse_job


def test_a_site_too_slow_for_the_deadline_is_learned_and_left_out(tmp_path, make_job) -> None:
    """Round 1: site b's clients (6 s each) miss the 4 s deadline. Their late answers still teach
    the profiles, so later rounds skip them (busy while they run, then predicted too slow) instead
    of waiting on them, and every round completes with site a alone (about 1 s a round)."""
    from fedgrid.flow.rounds.runner import run

    sites = [{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 3},
             {"name": "b", "executor": {"kind": "htex", "workers": 3}, "clients": 3}]
    job = parse_job(make_job(tmp_path / "run", rounds=8, model="mlp", sites=sites,
                             train={"epochs": 1, "batch_size": 16, "lr": 0.05},
                             round={"min_clients": 3, "deadline_s": 4, "select": "deadline", "retries": 0,
                                    "explore_after": 20},
                             faults=[{"site": "b", "delay_s": 6}, {"site": "a", "delay_s": 0.3}]))
    rows = run(job, quiet=True).rows
    assert [r["round"] for r in rows] == list(range(1, 9))
    assert {f["client"] for f in rows[0]["failures"]} == {3, 4, 5}
    assert all(f["reason"].startswith("late") for f in rows[0]["failures"])
    assert {s["client"] for s in rows[1]["skipped"]} == {3, 4, 5}
    assert all(s["reason"].startswith("busy") for s in rows[1]["skipped"])
    assert all({s["client"] for s in r["skipped"]} == {3, 4, 5} for r in rows[1:])
    last = [s["reason"] for s in rows[-1]["skipped"]]
    # (busy until its late task ends: site b's three tasks share the machine's cores)
    assert all(r.startswith(("predicted", "busy")) for r in last)
    assert any(r.startswith("predicted") and r.endswith("s > round.deadline_s 4") for r in last)
    assert all(r["participants"] == [0, 1, 2] and r["clients_failed"] == 0 for r in rows[1:])
