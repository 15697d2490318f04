"""Two HTEX sites end to end, and their driver SIGKILLed mid-run: what the sites trained before the
kill (routing, warm workers, checkpoints), then the next run resuming with contiguous rounds and no
orphan worker pools, and what a resume refuses. One run of the default job's two sites serves both
(starting them costs more than everything else these checks do)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.parquet as pq
import pytest

from fedgrid.flow.commands.cli import main
from fedgrid.flow.config import load_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import alive, recorded_processes
from fedgrid.flow.persist.table import rows_path
from fedgrid.flow.rounds.runner import ResumeRefused, run

# (mlp, 1 epoch: the test accuracy is 0.72, 0.84, 0.89 after rounds 1-3)
TRAIN = {"epochs": 1, "batch_size": 16, "lr": 0.1, "momentum": 0.9}
THREADS = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}]


def _eventually(ok, within_s: float = 30.0) -> bool:
    """Whether `ok()` holds within `within_s` (processes that were signalled take a moment to exit,
    longer on a busy machine)."""
    deadline = time.monotonic() + within_s
    while not ok():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _running(pid: int) -> bool:
    try:
        return alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def test_two_htex_sites_train_then_a_sigkilled_driver_resumes(tmp_path, write_job, capsys):
    # client 0 holds its round-4 answer (hold_at), so the driver is inside round 4 when it is killed,
    # however fast or slow the machine; the second run is let through by the drill's release file
    job = write_job(rounds=5, model="mlp", train=TRAIN, faults=[{"clients": [0], "hold_at": [4]}])
    run_dir = tmp_path / "run"
    orphans, pools = _kill_the_driver_in_round_4(job, run_dir)

    # the next run, through the same CLI but in this process: it starts (and reaps) at once, well
    # before the orphaned pools would give up on their dead interchange by themselves (~10 s). On
    # threads: a resumed run may change its sites, and the reaping is the same whatever they are
    (run_dir / "faults" / "release").touch()
    job = write_job(rounds=5, model="mlp", train=TRAIN, faults=[{"clients": [0], "hold_at": [4]}], sites=THREADS)
    capsys.readouterr()
    assert main(["run", str(job)]) == 0, capsys.readouterr().err
    second = capsys.readouterr()
    assert "resuming t after round 3" in second.out
    assert "left behind by an earlier driver" in second.out
    for p in orphans + pools:
        assert not alive(p), f"orphan {p.pid} survived"

    rows = pq.read_table(rows_path(run_dir)).to_pylist()
    assert [r["round"] for r in rows] == list(range(1, 6))
    _rounds_of_the_two_sites(rows[:3])
    files = ckpt.round_files(run_dir)
    assert [r for r, _ in files] == list(range(0, 6))
    for _, path in files:
        ckpt.read_round(path)  # every checkpoint verifies
    assert ckpt.read_round(ckpt.round_path(run_dir, 5)).row["test_accuracy"] == rows[-1]["test_accuracy"]
    assert (run_dir / "fedgrid.log").read_text().count("round") >= 5
    assert recorded_processes(run_dir) == [], "the second driver left processes behind"
    assert _pools_of(run_dir) == [], "a worker pool of this run is still running"
    _resume_refusals(write_job, run_dir)


def _kill_the_driver_in_round_4(job, run_dir) -> tuple[list, list]:
    """SIGKILL the driver (a process of its own, on the two HTEX sites) inside round 4; returns the
    processes it left behind: those on its record, and its worker pools found by command line."""
    cmd = [sys.executable, "-m", "fedgrid.flow.commands.cli", "run", str(job), "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not (ckpt.round_path(run_dir, 3).exists() and (run_dir / "faults" / "started-r000004").exists()):
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline, "driver never reached round 4"
        time.sleep(0.05)
    interchanges = [int(pid) for pid, _ in json.loads((run_dir / "processes.json").read_text())["pids"]]
    assert len(interchanges) == 2
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not ckpt.round_path(run_dir, 4).exists()
    # the interchanges die with the driver by themselves (PR_SET_PDEATHSIG), records or not
    assert _eventually(lambda: not any(_running(pid) for pid in interchanges))
    orphans = recorded_processes(run_dir)
    assert orphans, "the killed driver's interchanges and worker pools are still running"
    pools = _pools_of(run_dir)
    assert pools, "the killed driver's worker pools are still running"
    assert {p.pid for p in pools} <= {p.pid for p in orphans}, "every pool of the dead driver is on record"
    return orphans, pools


def _rounds_of_the_two_sites(rows: list[dict]) -> None:
    """Rounds 1-3, which the killed driver ran on its two HTEX sites of one worker each."""
    assert all(r["clients_ok"] == 6 and r["clients_failed"] == 0 for r in rows)
    # the model learns: digits after 3 rounds of FedAvg is far above chance (0.1)
    assert rows[-1]["test_accuracy"] > 0.5 and rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    # routing: clients 0-2 ran on site a's worker, 3-5 on site b's, and never on the other; the
    # worker is persistent: one process served every round of its site
    workers = {s: {u["worker"] for r in rows for u in r["updates"] if u["site"] == s} for s in "ab"}
    assert len(workers["a"]) == 1 and len(workers["b"]) == 1 and workers["a"] != workers["b"]
    assert {u["client"] for r in rows for u in r["updates"] if u["site"] == "a"} == {0, 1, 2}
    # the warm-up carried the model: each site's one worker built it before round 1, so no client
    # of round 1 had to (a warm task without the model's shapes left every first task cold)
    assert [u["cold"] for u in rows[0]["updates"]] == [False] * 6


def _resume_refusals(write_job, run_dir) -> None:
    """A changed model is refused; --fresh starts over and archives the old rounds."""
    with pytest.raises(ResumeRefused, match="different model"):
        run(load_job(write_job(rounds=6, model="cnn", sites=THREADS)), quiet=True)
    fresh = run(load_job(write_job(rounds=1, model="cnn", train=TRAIN, sites=THREADS)), quiet=True, fresh=True)
    assert [r["round"] for r in fresh.rows] == [1]
    assert list((run_dir / "archive").glob("*/rounds.parquet"))


def _pools_of(run_dir):
    """Worker pools found independently of processes.json: by the run's folder in their command line."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if alive(p) and any(str(run_dir) in a for a in (p.info["cmdline"] or [])) and p.pid != os.getpid():
                found.append(p)
        except psutil.Error:
            continue
    return found
