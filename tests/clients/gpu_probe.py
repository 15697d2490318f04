"""A Parsl app body for tests/integration/test_devices_run.py: what a worker of a GPU site sees,
before and after fedgrid restores its pin. It waits until `workers` tasks run at once, so each
lands on a worker of its own (a worker runs one task at a time)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def probe(meet: str, workers: int, limit_s: float = 60.0) -> dict[str, str | None]:
    from fedgrid.apps import devices

    seen = {"rank": os.environ.get("PARSL_WORKER_RANK"), "parsl": os.environ.get("CUDA_VISIBLE_DEVICES")}
    here = Path(meet)
    (here / f"worker-{seen['rank']}").touch()
    end = time.monotonic() + limit_s
    while len(list(here.glob("worker-*"))) < workers and time.monotonic() < end:
        time.sleep(0.05)
    seen["restored"] = devices.restore_pin()
    seen["visible"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return seen
