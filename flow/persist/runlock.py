"""One driver per run directory, and no worker pool outliving a dead driver.

The lock is an OS file lock (fcntl), so it disappears with the process that held it: a driver
killed with SIGKILL never leaves a stale lock behind. Whoever takes the lock next also owns every
process still running for this run directory — Parsl interchanges and worker pools started by a dead
driver, which would otherwise linger until their heartbeat times out — and ends them.

Those processes cannot be found by command line (Parsl retitles them with setproctitle), so the
driver records them in ``processes.json`` once its executors are up: each interchange's pid and each
LocalProvider block's process group (Parsl starts blocks with ``setpgrp``), with creation times so a
recycled pid is never mistaken for ours. The record also names the host and its boot, so a run
directory on a shared file system, or one copied elsewhere, never ends another machine's
processes, and it is removed when the driver shuts its executors down cleanly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import psutil


class RunDirBusy(Exception):
    pass


class RunLock:
    """An exclusive lock file in a run directory holding its owner's pid: ``.lock`` for the driver
    (RunDirBusy when taken); the scheduler takes ``.schedule.lock`` the same way with its own error."""

    def __init__(self, run_dir: Path, name: str = ".lock", busy: Any = None):
        self.run_dir = run_dir
        self.path = run_dir / name
        self.busy = busy or (lambda pid: RunDirBusy(f"{run_dir}: another fedgrid run (pid {pid}) is using this "
                                                    f"run directory; wait for it or stop it first"))
        self._fd: int | None = None

    def acquire(self) -> None:
        private_dir(self.run_dir)
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise self.busy(holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def _open(self) -> int:
        """The lock file, owner-only. One that another user owns, or that others can open (an
        older fedgrid made it 0644), is replaced first: whoever opened it could hold its lock and
        block every run here, naming a pid long gone."""
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if st.st_uid != os.getuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
                self.path.unlink()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        return fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def private_dir(path: Path) -> None:
    """A run directory only its owner can enter, whatever the umask: nobody else on a login node
    reads the model, the clients' updates or their state, or rewrites a checkpoint. Made so if
    missing; one of ours that others could enter (an older fedgrid's 0755, a group-writable umask)
    is closed; a directory of another user's is refused."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path}: the run directory belongs to uid {st.st_uid}, not to this user "
                              f"({os.getuid()}); use a checkpoint.dir of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def holder(lock: Path) -> str | None:
    """The pid written in a lock file whose lock is held now (None when nobody holds it)."""
    if not lock.exists():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return lock.read_text().strip() or "?"
    finally:
        os.close(fd)


def _ctime(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _local_htex(ex: Any) -> Any:
    """The executor whose processes run here: an emulated Globus Compute endpoint's engine HTEX."""
    inner = getattr(getattr(ex, "executor", None), "local_executor", None)
    return (inner() or ex) if callable(inner) else ex


def machine() -> dict[str, str]:
    """This host and this boot of it: a pid means nothing on another machine or after a reboot."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = str(psutil.boot_time())
    return {"host": socket.gethostname(), "boot": boot}


def record_processes(run_dir: Path, executors: list) -> dict:
    """Write processes.json: interchange pids and provider block process groups of `executors`,
    each group with its leader's creation time."""
    pids, pgids = [], []
    for ex in map(_local_htex, executors):
        ic = getattr(ex, "interchange_proc", None)
        if ic is not None and (ct := _ctime(ic.pid)) is not None:
            pids.append([ic.pid, ct])
        for job in getattr(getattr(ex, "provider", None), "resources", {}).values():
            rp = job.get("remote_pid")
            if rp:
                try:
                    g = os.getpgid(int(rp))
                except ProcessLookupError:
                    continue
                pgids.append([g, _ctime(g)])
    # anything in those process groups created after this driver started is ours
    started = psutil.Process().create_time() - 1.0
    rec = {"driver": os.getpid(), "started": started, "pids": pids, "pgids": pgids, **machine()}
    tmp = run_dir / ".processes.json.tmp"
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, run_dir / "processes.json")
    return rec


def recorded_processes(run_dir: Path) -> list[psutil.Process]:
    """Live processes that processes.json says belong to this run (never this process)."""
    try:
        rec = json.loads((run_dir / "processes.json").read_text())
    except (OSError, ValueError):
        return []
    if {k: rec.get(k) for k in ("host", "boot")} != machine():
        return []  # another machine's (or another boot's) processes: none of them is here
    me, found = os.getpid(), {}
    pids = {int(p): float(t) for p, t in rec.get("pids", [])}
    pgids = {int(g) for g, lead in rec.get("pgids", []) if _same_group(int(g), lead)}
    for p in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            pid, ct = p.info["pid"], p.info["create_time"]
            if pid == me or p.info["status"] == psutil.STATUS_ZOMBIE or not _mine(p):  # exited, or not ours
                continue
            if (pid in pids and abs(ct - pids[pid]) < 1.0) or (os.getpgid(pid) in pgids and ct >= rec["started"]):
                found[pid] = p
                for child in p.children(recursive=True):
                    if child.status() != psutil.STATUS_ZOMBIE:
                        found[child.pid] = child
        except (psutil.Error, ProcessLookupError):
            continue
    for p in _by_command_line(run_dir):  # pools of a driver killed before it could record them ...
        found.setdefault(p.pid, p)
        with contextlib.suppress(psutil.Error):  # ... and the workers they spawned, which do not name it
            for child in p.children(recursive=True):
                if _mine(child) and child.status() != psutil.STATUS_ZOMBIE:
                    found.setdefault(child.pid, child)
    found.pop(me, None)
    return list(found.values())


def _mine(p: psutil.Process) -> bool:
    """Run by this user: the reaper never signals another user's process, whatever its command
    line or process group says (a name under the run directory proves nothing about who runs it)."""
    try:
        return p.uids().real == os.getuid()
    except psutil.Error:
        return False


def _same_group(pgid: int, leader_ctime: float | None) -> bool:
    """The recorded process group is still the one recorded: its leader is gone (the members we
    started may outlive it, and the kernel does not reuse a group id while any member lives), or
    it is the very process that led it then. A reused id led by a newer process is not ours."""
    now = _ctime(pgid)
    return now is None or (leader_ctime is not None and abs(now - leader_ctime) < 1.0)


def forget_processes(run_dir: Path) -> None:
    """The executors were shut down cleanly: nothing of this run is left to end."""
    (run_dir / "processes.json").unlink(missing_ok=True)


def _by_command_line(run_dir: Path) -> list[psutil.Process]:
    """Worker pools name files under the run directory (cert_dir, logdir) in their command line."""
    mark, me, out = str(run_dir / "parsl") + os.sep, os.getpid(), []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["pid"] != me and p.info["status"] != psutil.STATUS_ZOMBIE and _mine(p) and \
                    any(mark in a for a in p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reap(run_dir: Path, timeout: float = 5.0) -> int:
    """Terminate, then kill, every process left for this run; returns how many there were."""
    procs = recorded_processes(run_dir)
    for p in procs:
        with contextlib.suppress(psutil.Error):  # gone meanwhile, or not ours to signal after all
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return len(procs)
