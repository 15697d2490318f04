"""Two HTEX sites' interchanges start together (fedgrid.executors.parsl_api.add_executors_at_once)
and live on after their starter threads have handed them over: the interchange's guard asks the
kernel for SIGKILL when its parent *thread* ends, so a starter that returned would take its
interchange with it and leave the driver waiting on a dead command channel."""

from __future__ import annotations

import time

import psutil
import pytest
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

from fedgrid.executors import parsl_api
from fedgrid.executors.htex import interchange_cmd


def _site(label: str) -> HighThroughputExecutor:
    # no blocks: only the interchanges start
    return HighThroughputExecutor(label=label, address="127.0.0.1", interchange_launch_cmd=interchange_cmd(),
                                  provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0))


def test_interchanges_started_together_answer_until_released_and_shut_down(tmp_path):
    dfk = DataFlowKernel(Config(executors=[], strategy="none", run_dir=str(tmp_path), usage_tracking=0))
    sites = [_site("a"), _site("b")]
    release = parsl_api.add_executors_at_once(dfk, sites)
    time.sleep(2)  # a starter thread that had ended would have had its interchange killed by now
    dead = [ex.label for ex in sites if psutil.Process(ex.interchange_proc.pid).status() == psutil.STATUS_ZOMBIE]
    if dead:  # (no cleanup: it would wait on the dead interchanges' command channels for good)
        release()
        pytest.fail(f"interchanges of {dead} died with their starter threads")
    try:
        assert set(dfk.executors) >= {"a", "b"}
        for ex in sites:
            assert ex.connected_managers() == []  # its command channel answers
            assert "start" not in ex.__dict__  # Parsl's own start() is back
    finally:
        dfk.cleanup()
        release()
    for ex in sites:
        assert ex.interchange_proc.poll() is not None, ex.label
