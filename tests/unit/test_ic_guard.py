"""The interchange's guard takes SIGTERM and SIGINT only from the driver (executors/ic_guard.py):
a batch scheduler stopping a job signals every process of it, and an interchange that died with
the others would leave the driver nothing to finish its round or shut down with. Tried on a
stand-in process whose "driver" is this test process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PROG = """
import sys, time
from fedgrid.executors.ic_guard import only_from
only_from(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(120)
"""


def test_stops_from_others_are_ignored_and_the_drivers_stop_ends_it() -> None:
    p = subprocess.Popen([sys.executable, "-c", PROG, str(os.getpid())], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        for sig in ("TERM", "INT"):  # from another process, as scancel's or a service manager's
            subprocess.run(["kill", f"-{sig}", str(p.pid)], check=True)
            line = p.stderr.readline()
            assert line.startswith(f"ic_guard: ignored signal {getattr(signal, 'SIG' + sig).value} from pid"), line
        assert p.poll() is None
        os.kill(p.pid, signal.SIGTERM)  # the driver's own (Parsl's shutdown)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
