"""Recurring training: the scheduler's firings, the run lock against overlap, coalescing, SIGTERM,
and `--rounds +N` -- all through the real CLI on real HTEX."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import holder

CLI = [sys.executable, "-m", "fedgrid.flow.commands.cli"]
ONE_SITE = [{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 4}]
THREADS = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 4}]


def _rounds(run_dir: Path) -> list[int]:
    return pq.read_table(run_dir / "rounds.parquet", columns=["round"]).column("round").to_pylist()


def test_scheduler_fires_three_times_contiguously_and_refuses_an_overlapping_run(tmp_path, make_job) -> None:
    run_dir = tmp_path / "run"
    job = make_job(run_dir, rounds=1, sites=THREADS, train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                   data={"dataset": "digits", "clients": 4, "partition": {"kind": "iid"}},
                   round={"min_clients": 3, "deadline_s": 60},
                   # every second: a run (HTEX start + 2 rounds) outlasts it, so firings coalesce too
                   faults=[{"clients": [0], "delay_s": 1.0}],  # each run lasts seconds: room to overlap it
                   schedule={"cron": "* * * * * *", "rounds_per_run": 2})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    sched = subprocess.Popen(CLI + ["schedule", str(path), "--firings", "3", "-q"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while holder(run_dir / ".lock") is None:  # a scheduled run holds the run directory
            assert sched.poll() is None and time.time() < deadline, sched.communicate()
            time.sleep(0.05)
        manual = subprocess.run(CLI + ["run", str(path), "--rounds", "+1"], capture_output=True, text=True,
                                timeout=120)
        out, err = sched.communicate(timeout=240)
    finally:
        if sched.poll() is None:
            sched.kill()
    assert manual.returncode == 3 and "another fedgrid run" in manual.stderr, manual.stderr
    assert sched.returncode == 0, err
    assert "stopped after 3 run(s)" in out
    assert _rounds(run_dir) == [1, 2, 3, 4, 5, 6]  # 3 firings x 2 rounds, no gap, no repeat
    assert [r for r, _ in ckpt.round_files(run_dir)] == list(range(7))
    state = json.loads((run_dir / "schedule.json").read_text())
    assert state["runs"] == 3 and state["coalesced"] >= 1 and state["next_firing"] is None
    assert state["last_result"]["ok"] and state["last_result"]["rounds_done"] == 6
    st = json.loads(subprocess.run(CLI + ["status", str(run_dir), "--json"], capture_output=True, text=True,
                                   check=True).stdout)
    assert st["rounds_done"] == 6 and st["schedule"]["runs"] == 3 and st["schedule"]["active"] is False
    # a scheduler restarted after downtime that spanned a firing runs once at start (then would wait
    # for next January 1st: --firings 1 ends it after the catch-up)
    state["last_firing"] = "2020-01-01T00:00:00+00:00"
    (run_dir / "schedule.json").write_text(json.dumps(state))
    catch_up = subprocess.run(CLI + ["schedule", str(path), "--cron", "0 0 1 1 *", "--rounds-per-run", "1",
                                     "--firings", "1", "-q"], capture_output=True, text=True, timeout=120)
    assert catch_up.returncode == 0 and "running once now" in catch_up.stdout, catch_up.stderr
    assert _rounds(run_dir) == list(range(1, 8))
    # with no cron anywhere a scheduler is refused
    job.pop("schedule")
    path.write_text(yaml.safe_dump(job))
    none = subprocess.run(CLI + ["schedule", str(path)], capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "schedule.cron" in none.stderr and "Traceback" not in none.stderr


def test_sigterm_finishes_the_round_checkpoints_and_exits_zero(tmp_path, make_job) -> None:
    run_dir = tmp_path / "run"
    job = make_job(run_dir, rounds=500, sites=ONE_SITE, data={"dataset": "digits", "clients": 4,
                                                                 "partition": {"kind": "iid"}},
                   train={"epochs": 1, "batch_size": 32, "lr": 0.05}, round={"min_clients": 3, "deadline_s": 60},
                   faults=[{"clients": [0], "delay_s": 0.3}])  # rounds long enough to land inside one
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = subprocess.Popen(CLI + ["run", str(path), "-q", "--log-format", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "rounds" / "round-000002.arrow").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "finishing the round in progress" in err and "Traceback" not in err
    rounds = _rounds(run_dir)
    assert 2 <= len(rounds) < 500 and rounds == list(range(1, len(rounds) + 1))
    assert ckpt.latest_valid(run_dir)[0].round == rounds[-1]  # every finished round is checkpointed
    assert f"stopped on request at round {rounds[-1]} of 500" in out
    logged = [json.loads(line) for line in (run_dir / "fedgrid.log").read_text().splitlines()]
    assert any("stop requested" in r["message"] for r in logged) and all(r["run_dir"] == str(run_dir)
                                                                         for r in logged)
    # and `--rounds +N` continues from there, N rounds exactly (on threads now: sites may change)
    path.write_text(yaml.safe_dump({**job, "sites": THREADS}))
    more = subprocess.run(CLI + ["run", str(path), "--rounds", "+2", "-q"], capture_output=True, text=True,
                          timeout=120)
    assert more.returncode == 0, more.stderr
    assert _rounds(run_dir) == list(range(1, rounds[-1] + 3))
    bad = subprocess.run(CLI + ["run", str(path), "--rounds", "+0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "+N" in bad.stderr
