"""`local`: threads in the driver process (Parsl ThreadPoolExecutor).

For tiny models, debugging, and sites that are the driver's own machine. Threads share the GIL, so
torch's own threading does the parallel work; a crashing client takes the driver with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build(site: Any, run_dir: Path):
    from parsl.executors import ThreadPoolExecutor

    return ThreadPoolExecutor(label=site.name, max_threads=site.executor.workers)


def describe(site: Any) -> str:
    return f"threads in the driver x{site.executor.workers}"
