"""The orphan reaper ends only processes it can prove belong to a dead driver of this run
directory on this host (a real child process stands in for a worker pool)."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from fedgrid.flow.persist import runlock


@pytest.fixture
def pool():
    """A sleeping process leading its own process group, as Parsl starts a block."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


def _record(run_dir, pool, **over) -> None:
    ct = psutil.Process(pool.pid).create_time()
    rec = {"driver": 1, "started": ct - 5, "pids": [], "pgids": [[pool.pid, ct]], **runlock.machine(), **over}
    (run_dir / "processes.json").write_text(json.dumps(rec))


def test_a_recorded_block_of_this_host_is_found(tmp_path, pool) -> None:
    _record(tmp_path, pool)
    assert [p.pid for p in runlock.recorded_processes(tmp_path)] == [pool.pid]


@pytest.mark.parametrize("over", [{"host": "another-node"}, {"boot": "an-earlier-boot"}])
def test_a_record_from_another_machine_or_boot_ends_nothing(tmp_path, pool, over) -> None:
    _record(tmp_path, pool, **over)
    assert runlock.recorded_processes(tmp_path) == []


def test_a_reused_group_id_led_by_a_newer_process_is_not_ours(tmp_path, pool) -> None:
    ct = psutil.Process(pool.pid).create_time()
    _record(tmp_path, pool, pgids=[[pool.pid, ct - 3600]])  # the recorded leader was another process
    assert runlock.recorded_processes(tmp_path) == []


def test_a_clean_shutdown_forgets_the_record(tmp_path, pool) -> None:
    _record(tmp_path, pool)
    runlock.forget_processes(tmp_path)
    assert runlock.recorded_processes(tmp_path) == [] and pool.poll() is None


def _waiting(cond, within: float = 10.0) -> bool:
    import time

    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(not hasattr(__import__("os"), "getuid") or __import__("os").getuid() != 0,
                    reason="starting a process as another user needs root (CI runs as root)")
def test_another_users_process_naming_the_run_directory_is_never_touched(tmp_path) -> None:
    """Its command line names this run's parsl folder, and it may even be in a recorded group:
    it is not ours to signal, and the reaper neither lists it nor crashes on it."""
    (tmp_path / "parsl").mkdir()
    theirs = subprocess.Popen(["/bin/sh", "-c", "sleep 60", f"{tmp_path}/parsl/x"], user="nobody", cwd="/",
                              start_new_session=True)
    try:
        ct = psutil.Process(theirs.pid).create_time()
        rec = {"driver": 1, "started": ct - 5, "pids": [[theirs.pid, ct]], "pgids": [[theirs.pid, ct]],
               **runlock.machine()}
        (tmp_path / "processes.json").write_text(json.dumps(rec))
        assert runlock.recorded_processes(tmp_path) == []
        assert runlock.reap(tmp_path, timeout=1.0) == 0 and theirs.poll() is None
    finally:
        theirs.kill()
        theirs.wait()


def test_the_workers_a_pool_spawned_are_ended_with_it(tmp_path) -> None:
    """A driver SIGKILLed before it recorded its processes: its pool is found by its command line,
    and the worker processes it spawned (whose own command lines do not name the run) with it."""
    (tmp_path / "parsl").mkdir()
    rec = {"driver": 1, "started": 0.0, "pids": [], "pgids": [], **runlock.machine()}  # its interchanges only
    (tmp_path / "processes.json").write_text(json.dumps(rec))
    pool = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & wait", f"{tmp_path}/parsl/pool"], start_new_session=True)
    try:
        assert _waiting(lambda: len(psutil.Process(pool.pid).children()) == 1)
        worker = psutil.Process(pool.pid).children()[0]
        assert {p.pid for p in runlock.recorded_processes(tmp_path)} == {pool.pid, worker.pid}
        assert runlock.reap(tmp_path, timeout=5.0) == 2
        assert _waiting(lambda: not runlock.alive(worker))
    finally:
        pool.kill()
        pool.wait()
