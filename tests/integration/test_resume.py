"""A driver SIGKILLed mid-run: the next run resumes with contiguous rounds and no orphan worker pools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.parquet as pq

from fedgrid.flow.commands.cli import main
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import alive, recorded_processes
from fedgrid.flow.persist.table import rows_path


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


def test_sigkill_driver_mid_run_then_resume(tmp_path, write_job, capsys):
    # client 0 holds its round-4 answer (hold_at), so the driver is inside round 4 when it is killed,
    # however fast or slow the machine; the second run is let through by the drill's release file
    job = write_job(rounds=5, model="mlp", train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                    faults=[{"clients": [0], "hold_at": [4]}])
    run_dir = tmp_path / "run"
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

    # the next run, through the same CLI but in this process: it starts (and reaps) at once, well
    # before the orphaned pools would give up on their dead interchange by themselves (~10 s). On
    # threads: a resumed run may change its sites, and the reaping is the same whatever they are
    (run_dir / "faults" / "release").touch()
    threads = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}]
    job = write_job(rounds=5, model="mlp", train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                    faults=[{"clients": [0], "hold_at": [4]}], sites=threads)
    capsys.readouterr()
    assert main(["run", str(job)]) == 0, capsys.readouterr().err
    second = capsys.readouterr()
    assert "resuming t after round" in second.out
    assert "left behind by an earlier driver" in second.out
    for p in orphans + pools:
        assert not alive(p), f"orphan {p.pid} survived"

    rounds = [r["round"] for r in pq.read_table(rows_path(run_dir)).to_pylist()]
    assert rounds == list(range(1, 6))
    files = ckpt.round_files(run_dir)
    assert [r for r, _ in files] == list(range(0, 6))
    for _, path in files:
        ckpt.read_round(path)  # every checkpoint verifies
    assert recorded_processes(run_dir) == [], "the second driver left processes behind"
    assert _pools_of(run_dir) == [], "a worker pool of this run is still running"


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
