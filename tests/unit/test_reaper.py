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
