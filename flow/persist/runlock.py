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

Taking a lock also settles who may read the run directory (``checkpoint.share_group``): owner-only
by default, or read-only for one Unix group. While the lock is held the process runs with the
matching umask (0o077, or 0o027 when shared), so everything fedgrid writes there (checkpoints, the
rounds table, the store, tracking, logs, exports, and whatever the Parsl processes it starts
locally write) is made that way whatever the user's umask; the lock's release restores the umask.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import grp
import json
import operator
import os
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

PRIVATE_UMASK = 0o077  # an owner-only run: files 0600, directories 0700
SHARED_UMASK = 0o027  # shared read-only with a group: files 0640, directories 0750 (and setgid)
PRIVATE_DIR, SHARED_DIR = 0o700, 0o2750  # setgid: what is made inside takes the directory's group
# owner-only even in a shared run: a lock another user could open they could hold (and block every
# run here); Parsl's CurveZMQ keys would let them talk to the interchange (and Parsl refuses a
# certificates directory that is not 0700)
KEEP_PRIVATE = {".lock", ".schedule.lock", "certificates"}


class RunDirBusy(Exception):
    pass


class RunLock:
    """An exclusive lock file in a run directory holding its owner's pid: ``.lock`` for the driver
    (RunDirBusy when taken); the scheduler takes ``.schedule.lock`` the same way with its own error.

    `share_group`: the job's ``checkpoint.share_group``, checked now (a ConfigError naming `source`,
    the job file, for a group that does not exist or is not this user's), so a scheduler fails at
    its start rather than at its first firing."""

    def __init__(self, run_dir: Path, name: str = ".lock", busy: Any = None, share_group: str | None = None,
                 source: str | Path = "<job>"):
        self.run_dir = run_dir
        self.path = run_dir / name
        self.busy = busy or (lambda pid: RunDirBusy(f"{run_dir}: another fedgrid run (pid {pid}) is using this "
                                                    f"run directory; wait for it or stop it first"))
        self.gid = share_gid(share_group, source) if share_group else None
        self._fd: int | None = None
        self._umask: int | None = None

    def acquire(self) -> None:
        """Take the lock, then settle the directory's access and this process's umask. Nothing is
        changed unless the lock is taken: a busy directory stays as its running driver made it."""
        own_dir(self.run_dir)
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
        try:
            settle(self.run_dir, self.gid)
        except BaseException:
            self.release()
            raise
        # process-wide, so the background writer, the trackers and the pools started from now on
        # (which inherit it) create files the same way; release() puts the caller's back
        self._umask = hold_umask(SHARED_UMASK if self.gid is not None else PRIVATE_UMASK)

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
        if self._umask is not None:
            drop_umask(self._umask)
            self._umask = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def private_dir(path: Path, gid: int | None = None) -> None:
    """A run directory only its owner can enter (or, with `gid`, that group read too), whatever
    the umask: nobody else on a login node reads the model, the clients' updates or their state,
    and nobody but the owner rewrites a checkpoint. Made so if missing; one of ours that others
    could enter (an older fedgrid's 0755, a group-writable umask) is closed; a directory of
    another user's is refused."""
    own_dir(path)
    settle(path, gid)


def own_dir(path: Path) -> None:
    """Make the run directory if missing (0700: nobody else gets in before it is settled); refuse
    one that is another user's, whose files we could neither make private nor trust."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path}: the run directory belongs to uid {st.st_uid}, not to this user "
                              f"({os.getuid()}); use a checkpoint.dir of your own")


def settle(path: Path, gid: int | None) -> None:
    """Bring a run directory of ours to owner-only (`gid` None) or to read-only for group `gid`.

    The directory itself says which it is, so only a change walks the tree: a run directory
    fedgrid made this way is already right inside (files are made under the lock's umask), and a
    large store on a parallel file system is not stat'ed at every start. The walk closes before it
    opens: made private, a directory is closed before its contents; made shared, its contents
    (an older fedgrid's 0664 files included) lose group write before the directory lets the group
    in."""
    st = os.stat(path)
    want = PRIVATE_DIR if gid is None else SHARED_DIR
    if stat.S_IMODE(st.st_mode) == want and (gid is None or st.st_gid == gid):
        return
    for p in _tree(path, shared=gid is not None):
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile
            _settle_one(p, gid, private=gid is None or not _shared_part(p, path))


def _tree(top: Path, shared: bool) -> Iterator[Path]:
    """`top` and everything under it, never following a link: each directory before its contents
    when closing (`shared` false), after them when opening."""
    if not shared:
        yield top
    try:
        entries = list(os.scandir(top))
    except FileNotFoundError:
        entries = []
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            yield from _tree(Path(e.path), shared)
        elif not e.is_symlink():
            yield Path(e.path)
    if shared:
        yield top


def _shared_part(p: Path, top: Path) -> bool:
    """Whether the group may read `p` in a shared run: not the locks, not Parsl's keys."""
    return not any(part in KEEP_PRIVATE for part in p.relative_to(top).parts)


def _settle_one(p: Path, gid: int | None, private: bool) -> None:
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
        return  # (nobody else can have made anything in a run directory of ours)
    if gid is not None and st.st_gid != gid:
        os.chown(p, -1, gid, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        mode = PRIVATE_DIR if private else SHARED_DIR
        if gid is not None:
            mode |= stat.S_ISGID  # made inside, even a private directory's files keep the group
    else:
        owner = st.st_mode & 0o700
        mode = owner if private else owner | (owner & 0o500) >> 3  # the group reads what the owner reads
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(p, mode)


def share_gid(group: str, source: str | Path = "<job>") -> int:
    """The id of ``checkpoint.share_group``: a group that exists here and that this user is in (a
    user can give a file only a group of their own; root any)."""
    from fedgrid.flow.config.errors import ConfigError

    try:
        gr = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
    except KeyError:
        raise ConfigError(source, "checkpoint.share_group", f"no group {group!r} on this machine "
                          "(`getent group` lists them)") from None
    if os.geteuid() != 0 and gr.gr_gid not in {os.getegid(), *os.getgroups()}:
        raise ConfigError(source, "checkpoint.share_group", f"this user is not a member of group {gr.gr_name!r} "
                          "(`id -Gn` lists yours; a group added since you logged in needs a new login)")
    return gr.gr_gid


@contextlib.contextmanager
def writing_in(run_dir: Path, out: Path | None = None) -> Iterator[None]:
    """The umask a run directory's own files are made with, for what a command writes into it
    without the lock (``fedgrid export`` and ``report``): 0o027 in a shared run directory (its
    group reads, never writes), 0o077 otherwise. Output sent elsewhere (`out` outside the run
    directory) keeps the user's umask."""
    try:
        mode = os.stat(run_dir).st_mode
    except FileNotFoundError:
        mode = None
    if mode is None or (out is not None and not Path(out).resolve().is_relative_to(Path(run_dir).resolve())):
        yield
        return
    mask = hold_umask(SHARED_UMASK if _is_shared(mode) else PRIVATE_UMASK)
    try:
        yield
    finally:
        drop_umask(mask)


_held: list[int] = []  # the umasks that run directories in use in this process ask for
_caller_umask = 0o022
_umask_lock = threading.Lock()


def hold_umask(mask: int) -> int:
    """Apply `mask` for as long as it is held (returns it, for drop_umask). The umask is one per
    process: two runs in threads of one program (the Python API) must not give each other's
    files the caller's umask when the first one ends, so the umask in force is every held mask
    together (a shared and a private run at once: both owner-only), and the caller's comes back
    with the last drop."""
    global _caller_umask
    with _umask_lock:
        if not _held:
            _caller_umask = os.umask(mask)
        _held.append(mask)
        os.umask(functools.reduce(operator.or_, _held))
    return mask


def drop_umask(mask: int) -> None:
    with _umask_lock:
        _held.remove(mask)
        os.umask(functools.reduce(operator.or_, _held) if _held else _caller_umask)


def _is_shared(mode: int) -> bool:
    return bool(mode & stat.S_ISGID and mode & 0o040)


def share_like_run(path: Path, run_dir: Path) -> None:
    """Give the share group of a shared run directory read access to `path` (a file or a folder
    inside it) that a library wrote owner-only whatever the umask (safetensors writes 0600)."""
    try:
        st = os.stat(run_dir)
    except FileNotFoundError:
        return
    if _is_shared(st.st_mode) and st.st_uid == os.getuid() and \
            Path(path).resolve().is_relative_to(Path(run_dir).resolve()):
        for p in _tree(Path(path), shared=True) if Path(path).is_dir() else [Path(path)]:
            _settle_one(p, st.st_gid, private=False)


def holder(lock: Path) -> str | None:
    """The pid written in a lock file whose lock is held now (None when nobody holds it, or when
    this user may not open it: a group a run is shared with reads its rounds, never its lock)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except (FileNotFoundError, PermissionError):
        return None
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


def record_processes(run_dir: Path, executors: list, nonce: str | None = None) -> dict:
    """Write processes.json: interchange pids and provider block process groups of `executors`,
    each group with its leader's creation time, and the run's nonce (every process a worker starts
    carries it: apps/guard.py)."""
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
    rec = {"driver": os.getpid(), "started": started, "pids": pids, "pgids": pgids, "nonce": nonce, **machine()}
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
    for p in marked(rec.get("nonce")):  # what client code started and a dead worker left behind
        found.setdefault(p.pid, p)
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


def marked(nonce: str | None) -> list[psutil.Process]:
    """This user's processes that carry the run's mark (``FEDGRID_RUN=<nonce>``, set by its
    workers, inherited by whatever client code starts, double-forked or not)."""
    if not nonce:
        return []
    from fedgrid.apps.guard import RUN_ENV

    me, out = os.getpid(), []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["pid"] != me and p.info["status"] != psutil.STATUS_ZOMBIE and _mine(p) and \
                    p.environ().get(RUN_ENV) == nonce:
                out.append(p)
        except psutil.Error:
            continue
    return out


def end(procs: list[psutil.Process], timeout: float = 5.0) -> int:
    """Terminate, then kill, `procs`; returns how many there were."""
    for p in procs:
        with contextlib.suppress(psutil.Error):  # gone meanwhile, or not ours to signal after all
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return len(procs)


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
    return end(recorded_processes(run_dir), timeout)
