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

from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import alive, recorded_processes


def test_sigkill_driver_mid_run_then_resume(tmp_path, write_job):
    job = write_job(rounds=8)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedgrid.flow.commands.cli", "run", str(job), "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not ckpt.round_path(run_dir, 3).exists():
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline, "driver never reached round 3"
        time.sleep(0.05)
    interchanges = [int(pid) for pid, _ in json.loads((run_dir / "processes.json").read_text())["pids"]]
    assert len(interchanges) == 2
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not ckpt.round_path(run_dir, 8).exists()
    # the interchanges die with the driver by themselves (PR_SET_PDEATHSIG), records or not
    time.sleep(0.5)
    assert not any(alive(psutil.Process(pid)) for pid in interchanges if psutil.pid_exists(pid))
    orphans = recorded_processes(run_dir)
    assert orphans, "the killed driver's interchanges and worker pools are still running"
    pools = _pools_of(run_dir)
    assert pools, "the killed driver's worker pools are still running"
    assert {p.pid for p in pools} <= {p.pid for p in orphans}, "every pool of the dead driver is on record"

    second = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resuming t after round" in second.stdout
    assert "left behind by an earlier driver" in second.stdout
    for p in orphans + pools:
        assert not alive(p), f"orphan {p.pid} survived"

    rounds = [r["round"] for r in pq.read_table(ckpt.rows_path(run_dir)).to_pylist()]
    assert rounds == list(range(1, 9))
    files = ckpt.round_files(run_dir)
    assert [r for r, _ in files] == list(range(0, 9))
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
