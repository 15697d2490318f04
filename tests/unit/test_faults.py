"""Fault rules: validated, combined per client, and which causes Parsl retries (the drills on real
executors: tests/integration/test_faults_run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgrid.flow.config import ConfigError, parse_job
from fedgrid.flow.rounds import faults
from fedgrid.flow.rounds.sites import retry_cost


def test_fault_rules_are_validated(make_job) -> None:
    def bad(rules, key):
        with pytest.raises(ConfigError, match=key):
            parse_job(make_job(Path("/tmp/r"), faults=rules), "job.yaml")

    bad([{"site": "zz", "fail_p": 0.1}], r"faults\.0\.site: no site named 'zz'")
    bad([{"clients": [9]}], r"faults\.0\.clients: client ids run 0\.\.5")
    bad([{"fail_p": 1.5}], r"faults\.0\.fail_p")
    bad([{"lost_from": 2}], r"faults\.0\.lost_from: a lost site needs `site`")
    bad([{"site": "a", "lost_from": 3, "lost_until": 2}], r"lost_until: must come after lost_from")
    local = [{"name": "a", "executor": {"kind": "local"}, "clients": 3}, {"name": "b", "clients": 3}]
    with pytest.raises(ConfigError, match="needs worker processes"):
        parse_job(make_job(Path("/tmp/r"), sites=local, faults=[{"site": "a", "kill_worker_at": [2]}]), "j.yaml")


def test_rules_combine_per_client(make_job) -> None:
    job = parse_job(make_job(Path("/tmp/r"), faults=[
        {"fail_p": 0.5}, {"site": "b", "fail_p": 0.5, "slowdown": 2}, {"clients": [4], "slowdown": 3, "raise_at": [2]},
        {"site": "b", "lost_from": 3, "lost_until": 5}]))
    assert faults.for_task(job, 0, "a", 1, "/m")["fail_p"] == 0.5
    f4 = faults.for_task(job, 4, "b", 2, "/m")
    assert f4["fail_p"] == 0.75 and f4["slowdown"] == 6 and f4["raise"] and not f4["kill"]
    assert not faults.for_task(job, 4, "b", 3, "/m")["raise"]
    assert [faults.lost_sites(job, r) for r in (2, 3, 4, 5)] == [set(), {"b"}, {"b"}, set()]
    assert faults.for_task(parse_job(make_job(Path("/tmp/r"))), 0, "a", 1, "/m") is None


def test_parsl_retries_only_transient_causes() -> None:
    from parsl.executors.high_throughput.errors import WorkerLost

    assert retry_cost(WorkerLost(1, "host"), None) == 1
    assert retry_cost(ConnectionResetError(), None) == 1
    assert retry_cost(ValueError("shape mismatch"), None) == float("inf")
    assert retry_cost(FloatingPointError("diverged"), None) == float("inf")


def test_a_held_client_waits_until_the_driver_has_moved_on_or_the_release_file(make_job, tmp_path) -> None:
    from fedgrid.apps import faults as site_faults

    job = parse_job(make_job(tmp_path / "run", round={"deadline_s": 10, "retries": 1},
                             faults=[{"clients": [5], "hold_at": [2, 3]}]))
    marker_dir = tmp_path / "run" / "faults"
    assert faults.for_task(job, 5, "b", 1, str(marker_dir)) is None  # not held in round 1: no faults at all
    assert faults.for_task(job, 4, "b", 2, str(marker_dir)) is None
    held = faults.for_task(job, 5, "b", 2, str(marker_dir))["hold"]
    # the next round has started (the driver built one of its tasks), round 2 is checkpointed (it
    # finished without the client; FedBuff's last step), or the drill's release file; at most as
    # long as every attempt of the round can take, plus one deadline
    until = [marker_dir / "started-r000003", tmp_path / "run/rounds/round-000002.arrow", marker_dir / "release"]
    assert held == {"until": [str(p) for p in until], "max_s": 30.0}
    # building round r's tasks leaves round r's marker (drills with a hold only)
    assert sorted(p.name for p in marker_dir.iterdir()) == ["started-r000001", "started-r000002"]
    faults.for_task(job, 0, "a", 3, str(marker_dir))
    assert until[0].exists()
    site_faults.hold(held)  # returns: round 3 has started
    until[0].unlink()
    for p in until[1:]:  # ... or on either of the others
        p.parent.mkdir(exist_ok=True)
        p.touch()
        site_faults.hold(held)
        p.unlink()
    site_faults.hold({"until": [str(tmp_path / "never")], "max_s": 0})  # (a thread site never hangs a run)
    assert not (Path("/m")).exists()  # (a job without a hold leaves no marker)
