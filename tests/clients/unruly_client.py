"""A client whose code misbehaves at its site on purpose, by client and round (tests/integration/
test_unruly_clients_run.py): it hangs, segfaults, returns an object array, prints without end
and leaves a double-forked process behind. Everything else it does is tests/clients' numpy client."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time
from pathlib import Path

from numpy_client import NumpyLogReg

from fedgrid.apps.outputs import running
from fedgrid.client import Fit


class Unruly(NumpyLogReg):
    def warm(self) -> None:
        self._data()  # sklearn's import and the data, before round 1 and its time limit

    def train(self, params, work) -> Fit:
        act = self.ctx.options.get("acts", {}).get(f"{self.ctx.client}@{work.round}")
        if act == "hang":
            time.sleep(3600)
        if act == "raise":
            raise RuntimeError(f"client {self.ctx.client} was told to raise")
        if act == "segfault":
            ctypes.string_at(0)
        fit = super().train(params, work)
        if act == "object":
            fit.params["w"] = fit.params["w"].astype(object)
        if self.ctx.client == self.ctx.options.get("noisy"):
            fit.metrics["orphans_alive"] = float(self._spawn(Path(self.ctx.options["pids"]), work.round))
            sys.stdout.write(("x" * 1023 + "\n") * 600)  # 600 KB a round
            print(f"last line of round {work.round}", flush=True)
        return fit

    def _spawn(self, pids: Path, rnd: int) -> int:
        """Start a daemon that leaves this process's tree (setsid, its parent exits); count the ones
        earlier rounds started that are still running."""
        alive = sum(running(int(f.read_text())) for f in pids.glob("child-*"))
        pids.mkdir(parents=True, exist_ok=True)
        subprocess.run(["sh", "-c", f"setsid sleep 300 >/dev/null 2>&1 & echo $! > {pids}/child-{rnd}"], check=True)
        return alive
