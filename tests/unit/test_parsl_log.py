"""Parsl's log as fedgrid configures it: the DataFlowKernel's per-task lines off, its failures and
everything the executors say kept; all of it with FEDGRID_PARSL_DEBUG=1."""

import logging

from fedgrid.flow.rounds.sites import parsl_logging


def test_per_task_lines_are_off_and_failures_stay(monkeypatch):
    monkeypatch.delenv("FEDGRID_PARSL_DEBUG", raising=False)
    config = parsl_logging()
    dflow = logging.getLogger("parsl.dataflow.dflow")
    assert config.level == logging.INFO
    assert not dflow.isEnabledFor(logging.INFO)  # "Task 7 changing state from launched to exec_done"
    assert dflow.isEnabledFor(logging.ERROR)  # "Task 7 failed after 0 retry attempts" and its exception
    assert logging.getLogger("parsl.executors.high_throughput.executor").isEnabledFor(logging.INFO)


def test_debug_turns_everything_on(monkeypatch):
    monkeypatch.setenv("FEDGRID_PARSL_DEBUG", "1")
    try:
        assert parsl_logging().level == logging.DEBUG
        assert logging.getLogger("parsl.dataflow.dflow").isEnabledFor(logging.DEBUG)
    finally:
        monkeypatch.delenv("FEDGRID_PARSL_DEBUG")
        parsl_logging()  # as a run without the variable leaves it
