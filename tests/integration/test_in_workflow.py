"""fedgrid inside a Parsl workflow (examples/parsl_workflow.py): a loaded DataFlowKernel with two
HTEX pools of its own, a preprocessing app per site whose futures the training waits for, and an
evaluation app that takes the training's future. The run uses the workflow's executors and leaves
them, and the DataFlowKernel, running: nothing added, nothing shut down, nothing recorded for a
reaper, the run directory's lock and the process umask given back."""

from __future__ import annotations

import os
from pathlib import Path

import parsl
import pytest
from parsl.app.app import python_app

from fedgrid.flow.persist.runlock import RunLock

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def example(monkeypatch):
    """The example's module, importable here and (by PYTHONPATH) in the pools the workflow starts."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])))
    import parsl_workflow

    return parsl_workflow


def test_a_job_trains_between_a_workflows_apps_and_leaves_its_executors_running(example, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    dfk = parsl.load(example.workflow_config(tmp_path))
    try:
        executors = dict(dfk.executors)
        result, accuracy = example.pipeline(tmp_path, rounds=3)

        assert result.rounds_done == 3 and accuracy > 0.3  # ten digits: chance is 0.1
        rows = result.rows
        assert all(not r["failures"] and len(r["updates"]) == 10 for r in rows)
        trained_on = {u["site"]: u["worker"] for r in rows for u in r["updates"]}
        assert sorted(trained_on) == sorted(example.SITES)

        assert not dfk.cleanup_called and dfk.executors == executors and parsl.dfk() is dfk
        after = {label: python_app(example.where, executors=[label])().result(timeout=60) for label in example.SITES}
        assert after == trained_on  # the very workers that trained take the workflow's next apps
        assert not (tmp_path / "run" / "processes.json").exists()
        assert os.umask(umask) == umask
        with RunLock(tmp_path / "run"):
            pass
    finally:
        dfk.cleanup()
