"""Run Parsl's HTEX interchange so that it dies with the driver that started it.

A SIGKILLed driver cannot shut its executors down, and Parsl's interchange does not notice that
its client is gone: it lives on, its worker pools keep heartbeating to it, and the whole site
outlives the run (seen here: for as long as anyone cared to wait). Linux's ``PR_SET_PDEATHSIG``
makes the kernel SIGKILL the interchange the moment its parent (the driver) dies, even when the
driver is killed before it has recorded the interchange's pid; the pools then lose their
interchange and the next driver's reaper finds them by the run directory in their command line.
It also leaves the driver's process group (a session of its own), so that stopping the whole group
stops the driver, which then shuts the interchange down cleanly.

    python -m fedgrid.executors.ic_guard DRIVER_PID   (stdin: the interchange's pickled config)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    driver = int(sys.argv[1]) if len(sys.argv) > 1 else None
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if driver is not None and os.getppid() != driver:  # the driver died before prctl took effect
            os._exit(1)
    # out of the driver's process group: a signal to the whole group (Ctrl-C in a terminal, GNU
    # timeout, `kill -- -PGID`, a service manager or batch scheduler stopping the job) reaches the
    # driver, which finishes its round and shuts the interchange down itself; had the interchange
    # died with the group, the driver would wait for it for good in Parsl's cleanup
    with contextlib.suppress(OSError):
        os.setsid()
    sys.argv = [sys.argv[0]]
    runpy.run_module("parsl.executors.high_throughput.interchange", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
