"""The site's guard around client code (apps/guard.py, blackbox.py, outputs.py), piece by piece.

What a worker of its own does is tried in a child interpreter that calls itself one (the
`PARSL_WORKER_RANK` a pool sets): an interrupted limit, a worker ended when its client ignores the
interrupt, `os._exit` named, output capped and rotated, a double-forked daemon ended with its task.
The dead worker's box is then read as the task's retry would read it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps import blackbox, outputs
from fedgrid.apps.guard import Guard, TaskTimeout, guarded, timeout_reason
from fedgrid.apps.update import Failure

ROOT = Path(__file__).resolve().parents[2]
FAULT = """Fatal Python error: Segmentation fault

Current thread 0x00007f0c5a1b6740 (most recent call first):
  File "{stdlib}/ctypes/__init__.py", line 519 in string_at
  File "/home/u/mypkg/crashy.py", line 27 in train
  File "{root}/apps/train.py", line 50 in call_client
  File "{root}/apps/train.py", line 260 in _train_client
  File "<string>", line 1 in <module>
"""


def _worker(code: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    """`code` run as a pool's worker would run a task: in the main thread of a process of its own."""
    prog = textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", prog], cwd=tmp, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PARSL_WORKER_RANK": "0", "TMPDIR": str(tmp), **env})


HEAD = """
import os, sys, time
from fedgrid.apps.guard import Guard, guarded
g = Guard(run="r1", limit_s={limit}, limit_key="train.timeout_s", output_dir="out", output_max=4096, grace_s=0.5)
"""


def test_a_segfault_is_named_with_the_client_line_that_caused_it() -> None:
    why = blackbox.crash_reason(FAULT.format(root=ROOT, stdlib=sysconfig.get_paths()["stdlib"]), "training")
    assert why == "worker died: SIGSEGV in client code [at crashy.py:27 in train]; the pool replaced the worker"
    assert "leaves no trace" in blackbox.crash_reason("", "training")  # SIGKILL: faulthandler never ran


def test_a_client_that_ignores_its_interrupt_loses_its_worker_and_the_retry_says_why(tmp_path) -> None:
    p = _worker(HEAD.format(limit=0.5) + """
with guarded(g, 7, 3, "training"):
    while True:
        try:
            time.sleep(60)
        except BaseException:
            pass
""", tmp_path)
    assert p.returncode == 70, p.stderr
    boxes = tmp_path / f"fedgrid-{os.getuid()}-r1" / "boxes"
    assert blackbox.dead_reason(boxes, 7, 2, "training", os.getpid()) is None  # another round's task
    why = blackbox.dead_reason(boxes, 7, 3, "training", os.getpid())
    assert why == ("timeout: training ran past 0.5 s (train.timeout_s) and did not stop when interrupted, "
                   "so its worker was ended and replaced")
    assert blackbox.dead_reason(boxes, 7, 3, "training", os.getpid()) is None  # reported once


def test_a_worker_that_dies_is_named_by_the_retry_and_the_retry_does_not_run_it_again(tmp_path) -> None:
    p = _worker(HEAD.format(limit=30) + """
with guarded(g, 4, 1, "training"):
    os._exit(3)
""", tmp_path)
    assert p.returncode == 3
    retry = _worker(HEAD.format(limit=30) + """
from fedgrid.apps.blackbox import WorkerDied
try:
    with guarded(g, 4, 1, "training"):
        print("ran again")
except WorkerDied as e:
    print("failed:", e)
""", tmp_path)
    assert retry.returncode == 0, retry.stderr
    out = (tmp_path / "out").glob("*.log")
    text = "".join(f.read_text() for f in out)
    assert "failed: worker died: the training code called os._exit(3)" in text and "ran again" not in text


def test_an_interrupted_task_frees_its_worker_which_serves_the_next_client(tmp_path) -> None:
    p = _worker(HEAD.format(limit=0.5) + """
from fedgrid.apps.guard import TaskTimeout
try:
    with guarded(g, 1, 1, "training"):
        time.sleep(60)
except TaskTimeout as e:
    print("failed:", e)
with guarded(g, 2, 1, "training"):
    print("client 2 trained")
""", tmp_path)
    assert p.returncode == 0, p.stderr
    text = "".join(f.read_text() for f in (tmp_path / "out").glob("*.log"))
    assert "failed: timeout: training ran past 0.5 s (train.timeout_s) and was ended at its site" in text
    assert "client 2 trained" in text


def test_output_is_capped_keeping_the_newest_and_a_daemon_ends_with_its_task(tmp_path) -> None:
    p = _worker(HEAD.format(limit=30) + """
import subprocess
with guarded(g, 1, 1, "training"):
    subprocess.run(["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $! > daemon.pid"], check=True)
    for i in range(200):
        print(f"line {i:04d} " + "x" * 90)
    os.system("echo from a child process")
from fedgrid.apps.outputs import running
open("daemon.alive", "w").write(str(running(int(open("daemon.pid").read()))))
""", tmp_path)
    assert p.returncode == 0, p.stderr
    (log,) = (tmp_path / "out").glob("*.log")
    old = Path(f"{log}.1")
    assert log.stat().st_size + old.stat().st_size <= 4096
    text = old.read_text() + log.read_text()
    assert "line 0199" in text and "line 0000" not in text and "from a child process" in text
    assert (tmp_path / "daemon.alive").read_text() == "False"


def test_a_limit_interrupts_python_code_in_a_driver_thread() -> None:
    g = Guard(run="r2", limit_s=0.3, limit_key="round.deadline_s")
    out: list[BaseException] = []

    def task() -> None:
        try:
            with guarded(g, 0, 1, "evaluation"):
                while True:
                    sum(range(1000))
        except TaskTimeout as e:
            out.append(e)

    t = threading.Thread(target=task)
    t.start()
    t.join(30)
    assert not t.is_alive() and len(out) == 1
    assert Failure.of(0, "a", out[0]).reason == timeout_reason(g, "evaluation")  # the reason, not the type


def test_a_process_left_outside_the_tree_is_found_by_the_runs_mark_and_ended() -> None:
    from fedgrid.flow.persist.runlock import end, marked

    p = subprocess.Popen(["sleep", "300"], env={**os.environ, "FEDGRID_RUN": "n0nce"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while p.pid not in [q.pid for q in marked("n0nce")] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [q.pid for q in marked("n0nce")] == [p.pid] and not marked("other")
        assert end(marked("n0nce")) == 1
        assert p.wait(10) is not None
    finally:
        p.kill()


def test_descendants_reads_the_process_tree() -> None:
    p = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(outputs.descendants(p.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.pid in outputs.descendants() and len(outputs.descendants(p.pid)) == 1
    finally:
        p.kill()
        p.wait()


def test_a_param_of_the_wrong_kind_is_named_with_its_dtype() -> None:
    from fedgrid.apps.client import Fit, Work
    from fedgrid.apps.train import checked_fit

    start = {"w": np.zeros(3, np.float32)}
    work = Work(round=1, seed=0, settings={"epochs": 1, "batch_size": 8}, global_params=start)
    with pytest.raises(TypeError, match=r"param 'w' of dtype object; expected a numeric array like the global "
                                        r"model's \(float32\)"):
        checked_fit(Fit({"w": np.zeros(3, object)}, 5), start, work)


def test_sys_exit_in_client_code_is_its_failure_not_the_workers_end() -> None:
    from fedgrid.apps.train import ClientCodeError, call_client

    with pytest.raises(ClientCodeError, match=r"SystemExit: 2 \[at"):
        call_client(sys.exit, 2)


def test_a_task_is_limited_by_timeout_s_else_twice_the_deadline_a_warm_up_by_the_deadline(tmp_path, make_job) -> None:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.tasks import guards

    job = parse_job(make_job(tmp_path, train={"timeout_s": 30, "output_mb": 2}, round={"deadline_s": 90}), "j.yaml")
    task, warm = guards(job, tmp_path, "n")
    assert (task.limit_s, task.limit_key, warm.limit_s, warm.limit_key) == (30, "train.timeout_s", 90,
                                                                            "round.deadline_s")
    assert task.output_max == 2 << 20 and task.output_dir == str(tmp_path / "logs" / "workers")
    plain = guards(parse_job(make_job(tmp_path, round={"deadline_s": 90}), "j.yaml"), tmp_path, "n")[0]
    assert (plain.limit_s, plain.limit_key) == (180, "twice round.deadline_s")


def test_finished_tasks_leave_nothing_behind_in_the_watchdog():
    """A worker serves thousands of clients a round (cohort tasks), each task's limit hours away:
    a finished task's timer must not stay queued until then (0.8 MB a round of 1,000 clients did)."""
    from fedgrid.apps.guard import WATCHDOG, _Watchdog

    dog = _Watchdog()
    fired: list[int] = []
    keep = dog.at(0.05, lambda: fired.append(1))
    for _ in range(1000):
        dog.cancel(dog.at(3600.0, lambda: fired.append(2)))
    assert len(dog._due) <= 65  # compacted as the cancelled entries piled up
    deadline = time.monotonic() + 10
    while not fired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fired == [1] and keep[3]  # the live timer still fired, the cancelled ones never
    assert WATCHDOG is not dog
