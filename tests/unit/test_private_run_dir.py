"""A run directory is its owner's alone, whatever the umask: another user on the same login node
can neither read what a run keeps there (checkpoints, the store, the log, exports: everything a
run writes, not only the top directory) nor block it through its lock file. `checkpoint.share_group`
lets one Unix group read it, never write it. "Another user" is `nobody`, and `daemon` one outside
nobody's group (the tests that need them run as root, as CI does)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from fedgrid.flow.commands.cli import main
from fedgrid.flow.commands.export import export_model
from fedgrid.flow.config import ConfigError, parse_job
from fedgrid.flow.persist.runlock import RunLock, private_dir
from fedgrid.flow.rounds.runner import run

AS_ROOT = pytest.mark.skipif(os.getuid() != 0 or shutil.which("flock") is None,
                             reason="acting as another user needs root and util-linux's flock (CI has both)")


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


NOBODY, DAEMON = _user("nobody"), _user("daemon")
# nobody's own group (`nogroup` on Debian): the group a run is shared with; daemon is not in it
SHARE = grp.getgrgid(NOBODY.pw_gid).gr_name if NOBODY else None
SHARING = pytest.mark.skipif(os.getuid() != 0 or NOBODY is None or DAEMON is None or DAEMON.pw_gid == NOBODY.pw_gid
                             or DAEMON.pw_name in grp.getgrgid(NOBODY.pw_gid).gr_mem,
                             reason="needs root, `nobody` and a `daemon` outside nobody's group (CI has them)")


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


# -- everything a run writes -----------------------------------------------------------------------

def _run(make_job, run_dir: Path, umask: int, rounds: int = 1, **checkpoint: object) -> None:
    """A one-round run on a thread site (a Parsl DataFlowKernel, its log, the store, a checkpoint,
    TensorBoard's events, fedgrid.log), then `fedgrid export` into the run directory, all under
    `umask`; the caller's umask is back afterwards."""
    raw = make_job(run_dir, rounds=rounds, model="logreg", data={"dataset": "digits", "clients": 2},
                   train={"epochs": 1, "batch_size": 64, "lr": 0.05}, round={"min_clients": 1, "deadline_s": 60},
                   sites=[{"name": "a", "executor": {"kind": "local", "workers": 1}, "clients": 2}],
                   store={"mode": "always"}, tracking={"tensorboard": True},
                   checkpoint={"dir": str(run_dir), **checkpoint})
    old = os.umask(umask)
    try:
        run(parse_job(raw, "job.yaml"), quiet=True)
        export_model(run_dir)
        assert os.umask(umask) == umask  # the run gave the process its umask back
    finally:
        os.umask(old)


def _walk(run_dir: Path) -> dict[str, os.stat_result]:
    """Every file and directory under `run_dir` (itself as "."), by relative path; links are not
    followed (a run makes none)."""
    out = {".": os.lstat(run_dir)}
    for root, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            p = Path(root, name)
            out[str(p.relative_to(run_dir))] = os.lstat(p)
    return out


WRITTEN = ("fedgrid.log", "rounds/round-000001.arrow", "rounds.parquet", "store", "parsl", "tensorboard",
           "export/model-round-000001.safetensors", "export/model-round-000001.json", ".lock")


@pytest.mark.integration
@pytest.mark.parametrize("umask", [0o022, 0o002], ids=oct)
def test_everything_a_run_writes_is_owner_only_whatever_the_umask(tmp_path, make_job, umask):
    run_dir = tmp_path / "run"
    _run(make_job, run_dir, umask)
    found = _walk(run_dir)
    assert all(any(k == w or k.startswith(w + "/") for k in found) for w in WRITTEN), sorted(found)
    opened = {k: oct(stat.S_IMODE(st.st_mode)) for k, st in found.items() if st.st_mode & 0o7077}
    assert not opened, opened


@pytest.mark.integration
@SHARING
def test_a_run_shared_with_a_group_is_readable_by_it_and_writable_by_nobody_else(shared_tmp, make_job):
    run_dir = shared_tmp / "run"
    _run(make_job, run_dir, 0o022)  # owner-only first: sharing it later opens what is already there
    _run(make_job, run_dir, 0o002, rounds=2, share_group=SHARE)
    found = _walk(run_dir)
    gid = NOBODY.pw_gid
    for rel, st in found.items():
        mode = stat.S_IMODE(st.st_mode)
        assert not mode & 0o007 and not mode & 0o020, (rel, oct(mode))  # others nothing, the group never writes
        if stat.S_ISDIR(st.st_mode):
            assert st.st_gid == gid and mode & stat.S_ISGID, (rel, oct(mode))
    for rel in ("rounds/round-000001.arrow", "rounds/round-000002.arrow", "fedgrid.log",
                "export/model-round-000002.safetensors"):  # (safetensors writes 0600 whatever the umask)
        assert found[rel].st_mode & 0o040 and found[rel].st_gid == gid, rel  # round 1 was made owner-only
    assert stat.S_IMODE(found[".lock"].st_mode) == 0o600  # the group could hold it and block every run
    ckpt = str(run_dir / "rounds" / "round-000002.arrow")
    assert _as("nobody", "cat", ckpt).returncode == 0  # the group reads a checkpoint ...
    assert _as("nobody", "sh", "-c", f": >> {ckpt}").returncode != 0  # ... never rewrites one
    assert _as("nobody", "sh", "-c", f": > {run_dir / 'rounds' / 'round-000003.arrow'}").returncode != 0
    assert _as("daemon", "cat", ckpt).returncode != 0  # a user outside the group reads nothing

    _run(make_job, run_dir, 0o002, rounds=2)  # share_group gone: owner-only again, and nothing new to train
    closed = {k: oct(stat.S_IMODE(st.st_mode)) for k, st in _walk(run_dir).items() if st.st_mode & 0o7077}
    assert not closed, closed
    assert _as("nobody", "cat", ckpt).returncode != 0


def test_two_runs_in_one_process_keep_the_umask_until_the_last_one_ends(tmp_path):
    """The Python API may run two jobs in threads of one program: the first to finish must not
    hand the other's files the caller's umask."""
    old = os.umask(0o002)
    try:
        a, b = RunLock(tmp_path / "a"), RunLock(tmp_path / "b")
        a.acquire()
        b.acquire()
        a.release()
        (tmp_path / "b" / "written").write_text("b's")
        b.release()
        assert os.umask(0o002) == 0o002
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "b" / "written").st_mode) == 0o600


def test_an_unknown_group_is_one_line_naming_the_job_file_and_key(tmp_path, make_job, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(make_job(tmp_path / "run", checkpoint={"dir": str(tmp_path / "run"),
                                                                         "share_group": "no-such-group-here"})))
    for cmd in ("check", "run"):
        assert main([cmd, str(job)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {job}: checkpoint.share_group: ") and err.count("\n") == 1, err
        assert "no-such-group-here" in err
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_a_group_this_user_is_not_in_is_refused(tmp_path, monkeypatch):
    other = next((g for g in grp.getgrall() if g.gr_gid not in {os.getegid(), *os.getgroups()}), None)
    if other is None:
        pytest.skip("this user is in every group")
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # not root, whoever runs the test
    with pytest.raises(ConfigError, match=rf"job\.yaml: checkpoint\.share_group: .*not a member of group "
                                          rf"'{other.gr_name}'"):
        RunLock(tmp_path / "run", share_group=other.gr_name, source="job.yaml")
    assert not (tmp_path / "run").exists()


@SHARING
def test_sharing_keeps_a_directory_of_another_user_refused(shared_tmp):
    run = shared_tmp / "theirs"
    run.mkdir()
    os.chown(run, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(PermissionError, match=f"belongs to uid {NOBODY.pw_uid}"):
        RunLock(run, share_group=SHARE).acquire()
    assert os.stat(run).st_uid == NOBODY.pw_uid and stat.S_IMODE(os.stat(run).st_mode) == 0o755


@SHARING
def test_sharing_an_old_run_directory_takes_group_write_away(shared_tmp):
    """An older fedgrid under umask 002 left 0664 files and 0775 directories inside its 0700 run
    directory: shared, the group must get read, not their write."""
    run = shared_tmp / "run"
    (run / "rounds").mkdir(parents=True)
    (run / "rounds" / "round-000001.arrow").write_text("x")
    for p, mode in ((run / "rounds" / "round-000001.arrow", 0o664), (run / "rounds", 0o775), (run, 0o700)):
        p.chmod(mode)
    private_dir(run, NOBODY.pw_gid)
    assert stat.S_IMODE(os.stat(run / "rounds").st_mode) == 0o2750
    assert stat.S_IMODE(os.stat(run / "rounds" / "round-000001.arrow").st_mode) == 0o640
    assert {os.stat(p).st_gid for p in (run, run / "rounds", run / "rounds" / "round-000001.arrow")} == \
        {NOBODY.pw_gid}


def _as(user: str, *cmd: str) -> subprocess.CompletedProcess:
    """`cmd` as `user` with that user's own groups (`user=` alone would keep root's)."""
    pw = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    return subprocess.run(list(cmd), user=pw.pw_uid, group=pw.pw_gid, extra_groups=groups, cwd="/",
                          capture_output=True)
