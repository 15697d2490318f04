"""A worker's output and the processes its clients start, kept within bounds.

Output: a Parsl worker's stdout and stderr are its pool's, which Parsl writes to one file per block
that nothing ever trims (50 MB of prints a round filled 157 MB in three rounds). A worker of its
own therefore points its file descriptors 1 and 2 — so C libraries and child processes are caught
too — at a pipe, and a thread copies the pipe into ``<folder>/<host>-<pid>.log``, rotated to
``.log.1`` at half the cap: a worker keeps at most the cap, its newest output. The thread always
drains the pipe, so a client printing without end is never blocked by the cap.

Processes: the worker is a child subreaper (apps/guard.py), so whatever a client starts stays its
descendant even after a double fork or ``setsid``; when the task ends they are terminated, then
killed, and reaped. The tree is read from ``/proc/<pid>/task/<tid>/children``, which costs
microseconds when there is nothing to end.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path


def folder(wanted: str | None, fallback: Path) -> Path:
    """Where this worker's output goes: the folder the driver named (under its run directory)
    when this machine has that run directory and can write there, else the run's private scratch
    folder (a pod or a cloud instance: the driver's path means nothing there)."""
    with contextlib.suppress(OSError):  # not there, or not ours to enter (pathlib raises EACCES)
        if wanted and Path(wanted).parent.parent.is_dir():
            Path(wanted).mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.access(wanted, os.W_OK):
                return Path(wanted)
    out = fallback / "output"
    out.mkdir(mode=0o700, exist_ok=True)
    return out


def capture(where: Path, max_bytes: int) -> Path:
    """Send fds 1 and 2 of this process through a capped, rotating log; returns its path."""
    path = where / f"{socket.gethostname()}-{os.getpid()}.log"
    flush()
    r, w = os.pipe()
    os.dup2(w, 1)
    os.dup2(w, 2)
    os.close(w)
    pump = threading.Thread(target=_pump, args=(r, path, max(int(max_bytes), 2048)), name="fedgrid-output",
                            daemon=True)
    pump.start()
    atexit.register(_drain, pump)
    return path


def _drain(pump: threading.Thread) -> None:
    """At exit, the last lines reach the file: this process lets go of the pipe, and the pump,
    seeing its end (unless a child process still holds it), copies what is left."""
    flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    pump.join(timeout=2.0)


def _pump(r: int, path: Path, max_bytes: int) -> None:
    """Copy the pipe into `path`, starting a new file each time one reaches half the cap (the full
    one becomes ``.1``): the newest half of the cap, at least, is always kept."""
    half = max_bytes // 2
    out, size = _open(path), 0
    while chunk := os.read(r, 1 << 16):
        chunk = chunk[-2 * half:]  # what is older than the cap would only be rotated away
        while chunk:
            if size >= half:
                out.close()
                os.replace(path, path.with_name(path.name + ".1"))
                out, size = _open(path), 0
            piece, chunk = chunk[:half - size], chunk[half - size:]
            out.write(piece)
            size += len(piece)
        out.flush()


def _open(path: Path):  # noqa: ANN202 - a binary file
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def children(pid: int) -> set[int]:
    """Direct children of `pid`, from every thread's children list."""
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.update(int(c) for c in f.read().split())
    return out


def descendants(pid: int | None = None) -> set[int]:
    """Every process below `pid` (this process by default)."""
    seen: set[int] = set()
    todo = [pid or os.getpid()]
    while todo:
        for c in children(todo.pop()) - seen:
            seen.add(c)
            todo.append(c)
    return seen


def has_children() -> bool:
    """Whether this process has any child, running or not yet reaped: one system call (a subreaper
    with none has no descendants at all), where listing them reads a file per thread."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # WNOWAIT: nothing is reaped
    except ChildProcessError:
        return False
    return True


def end_descendants(keep: set[int], grace_s: float = 1.0) -> list[int]:
    """Terminate, then kill, this process's descendants not in `keep`, and reap those that are
    its children; returns the pids that were ended."""
    if not keep and not has_children():
        return []
    doomed = descendants() - keep
    if not doomed:
        return []
    _signal(doomed, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while (left := {p for p in doomed if running(p)}) and time.monotonic() < end:
        _reap()
        time.sleep(0.02)
    late = descendants() - keep  # whatever they started meanwhile
    _signal(left | late, signal.SIGKILL)
    doomed |= late
    end = time.monotonic() + grace_s
    while _reap() and any(os.path.exists(f"/proc/{p}") for p in doomed) and time.monotonic() < end:
        time.sleep(0.01)
    return sorted(doomed)


def _signal(pids: set[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), None when there is
    no such process. (The name, in parentheses, may itself hold spaces and parentheses.)"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _reap() -> bool:
    """Collect exited children (the subreaper's orphans too); whether any child remains."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
