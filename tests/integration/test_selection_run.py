"""Deadline-aware selection in a real run: a site too slow for the deadline is learned and left out."""

from __future__ import annotations

from fedgrid.flow.config import parse_job


def test_a_site_too_slow_for_the_deadline_is_learned_and_left_out(tmp_path, make_job) -> None:
    """Round 1: site b's clients hold their answers past the 4 s deadline (until round 2 has
    started, then 0.2 s more). Their late answers, which arrive during round 2, still teach the
    profiles, so later rounds skip them (busy while they run, then predicted too slow: over 4.2 s)
    instead of waiting on them, and every round completes with site a alone (about 1 s a round)."""
    from fedgrid.flow.rounds.runner import run

    # threads: selection and the profiles are the driver's, whatever the executor kind
    sites = [{"name": "a", "executor": {"kind": "local", "workers": 3}, "clients": 3},
             {"name": "b", "executor": {"kind": "local", "workers": 3}, "clients": 3}]
    # b's late answers land 0.2 s into round 2 (and so after its selection), which lasts a's 1 s:
    # wide margins both ways on a busy machine, and no dependence on how long b trains
    job = parse_job(make_job(tmp_path / "run", rounds=4, model="mlp", sites=sites,
                             train={"epochs": 1, "batch_size": 16, "lr": 0.05},
                             round={"min_clients": 3, "deadline_s": 4, "select": "deadline", "retries": 0,
                                    "explore_after": 20},
                             faults=[{"site": "b", "hold_at": [1], "delay_s": 0.2}, {"site": "a", "delay_s": 1.0}]))
    rows = run(job, quiet=True).rows
    assert [r["round"] for r in rows] == list(range(1, 5))
    assert {f["client"] for f in rows[0]["failures"]} == {3, 4, 5}
    assert all(f["reason"].startswith("late") for f in rows[0]["failures"])
    assert {s["client"] for s in rows[1]["skipped"]} == {3, 4, 5}
    assert all(s["reason"].startswith("busy") for s in rows[1]["skipped"])
    assert all({s["client"] for s in r["skipped"]} == {3, 4, 5} for r in rows[1:])
    last = [s["reason"] for s in rows[-1]["skipped"]]
    assert all(r.startswith(("predicted", "busy")) for r in last)
    assert any(r.startswith("predicted") and r.endswith("s > round.deadline_s 4") for r in last)
    assert all(r["participants"] == [0, 1, 2] and r["clients_failed"] == 0 for r in rows[1:])
