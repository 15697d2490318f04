"""Run Parsl's HTEX interchange so that it dies with the driver that started it.

A SIGKILLed driver cannot shut its executors down, and Parsl's interchange does not notice that
its client is gone: it lives on, its worker pools keep heartbeating to it, and the whole site
outlives the run (seen here: for as long as anyone cared to wait). Linux's ``PR_SET_PDEATHSIG``
makes the kernel SIGKILL the interchange the moment its parent (the driver) dies, even when the
driver is killed before it has recorded the interchange's pid; the pools then lose their
interchange and the next driver's reaper finds them by the run directory in their command line.
It also leaves the driver's process group (a session of its own), so that stopping the whole group
stops the driver, which then shuts the interchange down cleanly. And it takes SIGTERM and SIGINT
only from the driver: a batch scheduler stopping a job (``scancel``, a walltime) or a service
manager signals every process of the job at once, not a process group, and an interchange that
died with the others would leave the driver nothing to finish its round or shut down with.

    python -m fedgrid.executors.ic_guard DRIVER_PID   (stdin: the interchange's pickled config)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import runpy
import signal
import sys
import threading

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
    if driver is not None:
        only_from(driver)
    sys.argv = [sys.argv[0]]
    from fedgrid.apps import lean

    lean.spare()  # an interchange talks to neither Kubernetes nor Globus Compute
    runpy.run_module("parsl.executors.high_throughput.interchange", run_name="__main__", alter_sys=True)


STOPS = {signal.SIGTERM, signal.SIGINT}


def only_from(driver: int) -> None:
    """SIGTERM and SIGINT end this process only when the driver sends them (Parsl's shutdown);
    from anyone else they are noted and ignored (the driver ends this process, or it dies with
    the driver). Blocked here, before the interchange starts any thread, and taken by one thread
    with sigwaitinfo, which says who sent each."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)

    def watch() -> None:
        while True:
            info = signal.sigwaitinfo(STOPS)
            if info.si_pid == driver:
                os._exit(128 + info.si_signo)
            print(f"ic_guard: ignored signal {info.si_signo} from pid {info.si_pid}: the driver ends the "
                  "interchange", file=sys.stderr, flush=True)

    threading.Thread(target=watch, name="ic-guard-signals", daemon=True).start()


if __name__ == "__main__":
    main()
