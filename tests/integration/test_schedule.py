"""Recurring training: the scheduler's firings, the run lock against overlap, coalescing, SIGTERM,
and `--rounds +N` -- all through the real CLI (the scheduled runs on threads, SIGTERM on HTEX). The
CLI runs in this process (the `cli` fixture) except where a process of its own is the point: the
scheduler that holds the run directory while a manual run is refused, and the run that gets SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import holder, recorded_processes

CLI = [sys.executable, "-m", "fedgrid.flow.commands.cli"]
ONE_SITE = [{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 4}]
THREADS = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 4}]


def _rounds(run_dir: Path) -> list[int]:
    return pq.read_table(run_dir / "rounds.parquet", columns=["round"]).column("round").to_pylist()


def test_scheduler_fires_three_times_contiguously_and_refuses_an_overlapping_run(tmp_path, make_job, cli) -> None:
    run_dir = tmp_path / "run"
    job = make_job(run_dir, rounds=1, sites=THREADS, train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                   data={"dataset": "digits", "clients": 4, "partition": {"kind": "iid"}},
                   round={"min_clients": 3, "deadline_s": 60},
                   # the first run's client 0 holds its round-1 answer until this test releases it: that
                   # run is certainly in progress while a manual run is tried, and it outlasts firings
                   # (every second), which coalesce
                   faults=[{"clients": [0], "hold_at": [1]}],
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
        held = time.monotonic()
        # (in this process: the lock is the scheduler process's, so this is another driver all the same)
        manual_rc, _, manual_err = cli("run", path, "--rounds", "+1")
        # the run began (fired) before its lock was seen, so it outlasts held + 2.5 s: at least two
        # firings (seconds) after the one that started it pass meanwhile, and they coalesce into one
        time.sleep(max(0.0, held + 2.5 - time.monotonic()))
        (run_dir / "faults").mkdir(parents=True, exist_ok=True)
        (run_dir / "faults" / "release").touch()
        out, err = sched.communicate(timeout=240)
    finally:
        if sched.poll() is None:
            sched.kill()
    assert manual_rc == 3 and "another fedgrid run" in manual_err, manual_err
    assert sched.returncode == 0, err
    assert "stopped after 3 run(s)" in out
    assert _rounds(run_dir) == [1, 2, 3, 4, 5, 6]  # 3 firings x 2 rounds, no gap, no repeat
    assert [r for r, _ in ckpt.round_files(run_dir)] == list(range(7))
    state = json.loads((run_dir / "schedule.json").read_text())
    assert state["runs"] == 3 and state["coalesced"] >= 1 and state["next_firing"] is None
    assert state["last_result"]["ok"] and state["last_result"]["rounds_done"] == 6
    rc, status_out, _ = cli("status", str(run_dir), "--json")
    assert rc == 0
    st = json.loads(status_out)
    assert st["rounds_done"] == 6 and st["schedule"]["runs"] == 3 and st["schedule"]["active"] is False
    # a scheduler restarted after downtime that spanned a firing runs once at start (then would wait
    # for next January 1st: --firings 1 ends it after the catch-up)
    state["last_firing"] = "2020-01-01T00:00:00+00:00"
    (run_dir / "schedule.json").write_text(json.dumps(state))
    rc, catch_up, catch_up_err = cli("schedule", str(path), "--cron", "0 0 1 1 *", "--rounds-per-run", "1",
                                      "--firings", "1", "-q")
    assert rc == 0 and "running once now" in catch_up, catch_up_err
    assert _rounds(run_dir) == list(range(1, 8))
    # with no cron anywhere a scheduler is refused
    job.pop("schedule")
    path.write_text(yaml.safe_dump(job))
    rc, _, none_err = cli("schedule", str(path))
    assert rc == 2 and "schedule.cron" in none_err and "Traceback" not in none_err


def test_sigterm_finishes_the_round_checkpoints_and_exits_zero(tmp_path, make_job, cli) -> None:
    run_dir = tmp_path / "run"
    job = make_job(run_dir, rounds=500, sites=ONE_SITE, data={"dataset": "digits", "clients": 4,
                                                                 "partition": {"kind": "iid"}},
                   train={"epochs": 1, "batch_size": 32, "lr": 0.05}, round={"min_clients": 3, "deadline_s": 60},
                   faults=[{"clients": [0], "hold_at": [3]}])  # round 3 waits for this test: SIGTERM lands inside it
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    # a process group of its own, signalled as a whole, as a terminal's Ctrl-C, GNU timeout, a service
    # manager or a batch scheduler does: the interchange must not die under the driver (it did, and
    # the driver then waited for it for good in Parsl's cleanup)
    proc = subprocess.Popen(CLI + ["run", str(path), "-q", "--log-format", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    err_lines: list[str] = []

    def read_err() -> None:
        for line in proc.stderr:
            err_lines.append(line)

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120
        while not (run_dir / "faults" / "started-r000003").exists():
            assert proc.poll() is None and time.time() < deadline, "".join(err_lines)
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        # the driver has taken the request (its handler printed) before round 3 may finish
        while not any("finishing the round in progress" in line for line in err_lines):
            assert proc.poll() is None and time.time() < deadline, "".join(err_lines)
            time.sleep(0.05)
        (run_dir / "faults" / "release").touch()
        out = proc.stdout.read()
        proc.wait(timeout=120)
        reader.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(err_lines)
    assert proc.returncode == 0, err
    assert recorded_processes(run_dir) == [], "the group's SIGTERM left processes of the run behind"
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
    rc, _, more_err = cli("run", str(path), "--rounds", "+2", "-q")
    assert rc == 0, more_err
    assert _rounds(run_dir) == list(range(1, rounds[-1] + 3))
    rc, _, bad_err = cli("run", str(path), "--rounds", "+0")
    assert rc == 2 and "+N" in bad_err
