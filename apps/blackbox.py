"""A worker's black box: who it was running when it died, and how it died.

When client code kills its worker (a segfault in a C extension, ``os._exit``, the OOM killer),
Parsl reports only ``WorkerLost`` and replaces the worker; nothing names the client, the signal or
the line. So while a task runs, its worker keeps a small record in the run's private scratch
folder (``$TMPDIR/fedgrid-<uid>-<run nonce>/boxes``): ``<pid>.json`` says which task is running,
and Python's faulthandler writes ``<pid>.fault`` (the signal and the stack) if the process dies of a
fatal signal. The record is rewritten in place on one open file (empty between tasks), two system
calls a task: a worker of a cohort (apps/cohort.py) enters a task per client. ``os._exit`` is
wrapped to note its code first. The task's retry (Parsl retries a lost
worker once) lands on a worker of the same node, finds the dead worker's box for its own client and
round, and fails at once with the reason instead of running the crash again: a client that kills
its worker is recorded as such and is not retried without end.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import re
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from fedgrid.apps.outputs import proc_stat

_FATAL = {"Segmentation fault": "SIGSEGV", "Floating-point exception": "SIGFPE", "Floating point exception": "SIGFPE",
          "Aborted": "SIGABRT", "Bus error": "SIGBUS", "Illegal instruction": "SIGILL"}
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)', re.M)
# where a crash's innermost frame is not the client's own line: fedgrid, the standard library, and
# (less surely: a client may be an installed package) the installed libraries. fedgrid's folders both
# as imported (a checkout's fedgrid/flow, a link to flow/) and as resolved (flow/ itself)
_FEDGRID_STDLIB = (*dict.fromkeys(str(root / d) + os.sep for root in (Path(os.path.abspath(__file__)).parents[1],
                                                                       Path(__file__).resolve().parents[1])
                                  for d in ("apps", "flow", "executors")),
                   sysconfig.get_paths()["stdlib"] + os.sep, "<")  # "<": code run from a string
_LIBRARIES = tuple({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
_real_exit = os._exit


class WorkerDied(RuntimeError):
    """An earlier attempt of this task killed its worker; the message says how."""

    plain = True  # the message is the reason (apps/update.py Failure.of)


def scratch(run: str) -> Path:
    """The run's private scratch folder on this machine. The run's nonce is in its name, so another
    user cannot make it first; one that is not ours, or that others can enter, is refused."""
    path = scratch_path(run)
    path.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not path.is_dir() or path.is_symlink():
        raise PermissionError(f"{path}: not a private folder of this user's; fedgrid will not use it")
    return path


def scratch_path(run: str) -> Path:
    return Path(tempfile.gettempdir()) / f"fedgrid-{os.getuid()}-{run}"


def started(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): a pid is reused, a (pid, start) is not."""
    fields = proc_stat(pid)
    return fields[19] if fields is not None else None


class Box:
    """This worker's record, and the reader of dead workers' records."""

    def __init__(self, top: Path):
        self.dir = top / "boxes"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.pid = os.getpid()
        self.path = self.dir / f"{self.pid}.json"
        self.me = started(self.pid)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # for the process's life
        self._fault = open(self.dir / f"{self.pid}.fault", "w")  # noqa: SIM115 - open for the process's life
        faulthandler.enable(file=self._fault, all_threads=False)
        self.task: dict[str, Any] | None = None
        os._exit = self._exit  # type: ignore[assignment]  # a task's os._exit names itself first

    def enter(self, client: int, rnd: int, what: str, limit_s: float | None) -> None:
        self.task = {"pid": self.pid, "started": self.me, "client": client, "round": rnd, "what": what,
                     "limit_s": limit_s}
        self._write(self.task)

    def leave(self) -> None:
        self.task = None
        os.ftruncate(self._fd, 0)

    def died(self, reason: str) -> None:
        """The worker is about to end itself (a task past its limit): the reason for the retry."""
        if self.task is not None:
            self._write({**self.task, "reason": reason})

    def _write(self, rec: dict[str, Any]) -> None:
        data = json.dumps(rec).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def _exit(self, code: int) -> None:
        if self.task is not None:
            self.died(f"worker died: the {self.task['what']} code called os._exit({code}); the pool replaced "
                      "the worker")
        _real_exit(code)

    def check(self, client: int, rnd: int, what: str) -> None:
        """Raise WorkerDied if a dead worker's box says it died running this very task."""
        if (reason := dead_reason(self.dir, client, rnd, what, self.pid)) is not None:
            raise WorkerDied(reason)


def dead_reason(boxes: Path, client: int, rnd: int, what: str, me: int) -> str | None:
    """How a dead worker died running `what` of `client` at round `rnd`, from its box (which is
    then discarded, so one death is reported once); None when no dead worker's box says so.
    Boxes of dead workers whose round is long past are discarded on the way."""
    found = None
    for path in boxes.glob("*.json"):
        rec = _read(path)
        if rec is None:  # between tasks (or being written): a dead worker's empty box is dropped
            if path.stem.isdigit() and int(path.stem) != me and _gone(int(path.stem)):
                _discard(path, boxes / f"{path.stem}.fault")
            continue
        if rec.get("pid") == me or _alive(rec):
            continue
        fault = boxes / f"{rec['pid']}.fault"
        if found is None and (rec.get("client"), rec.get("round"), rec.get("what")) == (client, rnd, what):
            found = rec.get("reason") or crash_reason(_text(fault), what)
            _discard(path, fault)
        elif int(rec.get("round", 0)) < rnd - 1:  # another task's, and its retry has long passed
            _discard(path, fault)
    return found


def real_exit(code: int) -> None:
    """End this worker now, as itself (not a client's os._exit)."""
    _real_exit(code)


def vanish(code: int) -> None:
    """End this worker as a lost node would: no box, so the retry runs the task again (fault drills)."""
    if isinstance(getattr(os._exit, "__self__", None), Box):
        os._exit.__self__.leave()  # type: ignore[attr-defined]
    _real_exit(code)


def crash_reason(fault: str, what: str) -> str:
    """``worker died: SIGSEGV in client code [at x.py:12 in train]`` from a faulthandler dump."""
    first = fault.strip().splitlines()[0] if fault.strip() else ""
    sig = next((name for text, name in _FATAL.items() if text in first), None)
    frames = [m.groupdict() for m in _FRAME.finditer(fault)]
    if sig is None:
        return (f"worker died during the {what}: killed by a signal that leaves no trace (SIGKILL: out of memory?) "
                "or exited from native code; the pool replaced the worker")
    theirs = [f for f in frames if not f["file"].startswith(_FEDGRID_STDLIB)]
    mine = [f for f in theirs if not f["file"].startswith(_LIBRARIES)]
    at = next(iter(mine or theirs or frames), None)
    where = f" [at {os.path.basename(at['file'])}:{at['line']} in {at['func']}]" if at else ""
    part = "client code" if any(f["func"] == "call_client" for f in frames) or theirs else f"the {what}"
    return f"worker died: {sig} in {part}{where}; the pool replaced the worker"


def _alive(rec: dict[str, Any]) -> bool:
    pid = int(rec.get("pid", 0))
    if rec.get("started") is None:  # no /proc here: a live pid is taken to be that worker
        return not _gone(pid)
    return started(pid) == rec["started"]


def _gone(pid: int) -> bool:
    """No process has this pid (its worker ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _read(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("pid"), int) else None


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[:20000]
    except OSError:
        return ""


def _discard(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
