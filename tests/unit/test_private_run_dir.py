"""A run directory is its owner's alone, whatever the umask: another user on the same login node
can neither read what a run keeps there nor block it through its lock file. "Another user" is
`nobody` (the tests that need one run as root, as CI does)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fedgrid.flow.persist.runlock import RunLock, private_dir

AS_ROOT = pytest.mark.skipif(os.getuid() != 0 or shutil.which("flock") is None,
                             reason="acting as another user needs root and util-linux's flock (CI has both)")


@pytest.fixture
def shared_tmp():
    """A folder under /tmp that every user may enter, as a project directory on a login node is."""
    d = Path(tempfile.mkdtemp(prefix="fedgrid-shared-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_the_run_directory_and_its_lock_are_owner_only_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        lock = RunLock(tmp_path / "run")
        lock.acquire()
        lock.release()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "run" / ".lock").st_mode) == 0o600


def test_a_run_directory_others_could_enter_is_closed(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o775)
    run.chmod(0o775)
    private_dir(run)
    assert stat.S_IMODE(os.stat(run).st_mode) == 0o700


@AS_ROOT
def test_another_user_holding_an_old_world_readable_lock_cannot_block_a_run(shared_tmp):
    run = shared_tmp / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)
    (run / ".lock").write_text("12345")  # as an older fedgrid left it: 0644, naming a long-gone pid
    (run / ".lock").chmod(0o644)
    squatter = subprocess.Popen(["flock", "--shared", str(run / ".lock"), "sleep", "60"], user="nobody", cwd="/")
    try:
        deadline = time.monotonic() + 10
        while not _held(run / ".lock"):
            assert squatter.poll() is None and time.monotonic() < deadline, "nobody never took the lock"
            time.sleep(0.05)
        lock = RunLock(run)
        lock.acquire()  # not "another fedgrid run (pid 12345)": the squatted file is replaced
        lock.release()
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        denied = subprocess.run(["cat", str(run / ".lock")], user="nobody", cwd="/", capture_output=True, text=True)
        assert denied.returncode != 0, denied.stdout  # nobody cannot enter the run directory any more
    finally:
        squatter.kill()
        squatter.wait()


@AS_ROOT
def test_a_run_directory_of_another_user_is_refused_by_name(shared_tmp):
    run = shared_tmp / "theirs"
    run.mkdir()
    os.chown(run, 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        RunLock(run).acquire()


def _held(path: Path) -> bool:
    """Whether some process holds a lock on `path` (a non-blocking exclusive try fails)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
