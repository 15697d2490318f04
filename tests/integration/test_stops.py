"""Every way a driver is stopped ends it cleanly (finished rounds intact, the documented exit code,
nothing of the run left running): what a batch scheduler does at `scancel` or at the walltime (and
a service manager at stop) — SIGTERM to every process of the job at once, interchange and worker
pools included, not to a process group — and a second signal while the first is finishing its
round. (SIGTERM to the process group: tests/integration/test_schedule.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import yaml

from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import recorded_processes

CLI = [sys.executable, "-m", "fedgrid.flow.commands.cli"]


class Driver:
    """`fedgrid run` in a process of its own, its stderr read as it comes."""

    def __init__(self, job: Path, *args: str):
        self.proc = subprocess.Popen(CLI + ["run", str(job), "-q", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.err: list[str] = []
        self.reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def until(self, what, limit: float = 120) -> None:  # noqa: ANN001 - a predicate
        deadline = time.time() + limit  # a hang guard only
        while not what():
            assert self.proc.poll() is None and time.time() < deadline, "".join(self.err)
            time.sleep(0.05)

    def finish(self, limit: float = 60) -> int:
        try:
            self.proc.wait(timeout=limit)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(timeout=30)
        return self.proc.returncode


def _rounds(run_dir: Path) -> list[int]:
    return pq.read_table(run_dir / "rounds.parquet", columns=["round"]).column("round").to_pylist()


def _every_process_of(d: Driver, run_dir: Path) -> list[psutil.Process]:
    """What a scheduler signals at scancel: the driver and all it started (its cgroup)."""
    me = psutil.Process(d.proc.pid)
    return [me, *me.children(recursive=True), *recorded_processes(run_dir)]


def test_a_scheduler_stopping_every_process_and_a_second_signal_both_end_cleanly(tmp_path, make_job) -> None:
    run_dir = tmp_path / "run"
    job = make_job(run_dir, rounds=50, sites=[{"name": "a", "executor": {"kind": "htex", "workers": 2}, "clients": 4}],
                   data={"dataset": "digits", "clients": 4, "partition": {"kind": "iid"}},
                   train={"epochs": 1, "batch_size": 32, "lr": 0.05}, round={"min_clients": 4, "deadline_s": 60},
                   # round 3 waits for client 0, held: the signals land inside it, and with its worker
                   # stopped too the round cannot reach its quorum of all four
                   faults=[{"clients": [0], "hold_at": [3]}])
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    started = run_dir / "faults" / "started-r000003"

    d = Driver(path)
    d.until(started.exists)
    for p in _every_process_of(d, run_dir):  # the interchange and the pools too, as scancel does
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    assert d.finish() == 0, "".join(d.err)
    err = "".join(d.err)
    assert "Traceback" not in err
    assert "round 3 did not finish: its sites were stopped too" in (run_dir / "fedgrid.log").read_text()
    assert recorded_processes(run_dir) == [], "the scheduler's SIGTERM left processes of the run behind"
    assert _rounds(run_dir) == [1, 2] and ckpt.latest_valid(run_dir)[0].round == 2

    started.unlink()  # the resumed run holds round 3 again: a first SIGTERM, then Ctrl-C, land in it
    d = Driver(path)
    d.until(started.exists)
    d.proc.send_signal(signal.SIGTERM)
    d.until(lambda: any("finishing the round in progress" in line for line in d.err))
    os.killpg(d.proc.pid, signal.SIGINT)  # the round is held for minutes: only the second signal ends it now
    assert d.finish() == 130, "".join(d.err)
    assert "interrupted; finished rounds are saved" in "".join(d.err)
    assert recorded_processes(run_dir) == []
    assert _rounds(run_dir) == [1, 2] and ckpt.latest_valid(run_dir)[0].round == 2
