"""Seeing what happened: status, report, export, monitoring and the Python API, on a real run."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import fedgrid
from fedgrid.flow.persist import checkpoint as ckpt


@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_job):
    """One 3-round run through the Python API, with a flaky client and Parsl monitoring on (threads:
    what status, report and export read is the driver's, and monitoring's task table is written by
    the DataFlowKernel, whatever the executor)."""
    tmp = tmp_path_factory.mktemp("ops")
    job = make_job(tmp / "run", rounds=3, monitoring=True,
                          sites=[{"name": "a", "executor": {"kind": "local", "workers": 1}, "clients": 3},
                                 {"name": "b", "executor": {"kind": "local", "workers": 1}, "clients": 3}],
                          faults=[{"clients": [1], "raise_at": [1, 2]}])
    result = fedgrid.run(job, quiet=True)
    return result.run_dir


def test_status_counts_failures_by_reason_and_times_sites(finished, cli) -> None:
    info = fedgrid.status(finished)
    assert info["rounds_done"] == 3 and info["last_round"] == 3 and info["last_accuracy"] > 0.3
    assert info["failures_by_reason"] == {"InjectedFault": 2}
    assert set(info["sites"]) == {"a", "b"}
    assert info["sites"]["a"]["failures"] == 2 and info["sites"]["a"]["updates"] == 7
    assert info["sites"]["b"]["updates"] == 9 and info["sites"]["b"]["train_s_median"] > 0
    rc, out, err = cli("status", finished)
    assert rc == 0, err
    assert "failures by reason: InjectedFault 2" in out and "site a: 7 updates, 2 failures" in out


def test_report_writes_plots_that_show_the_curves(finished, tmp_path, cli) -> None:
    import matplotlib.image as mpimg

    rc, _, err = cli("report", finished, "--out", tmp_path)
    assert rc == 0, err
    md = (tmp_path / "summary.md").read_text()
    assert "| InjectedFault | 2 |" in md and "![accuracy](accuracy.png)" in md and "| a | 7 | 2 |" in md
    assert "| bytes up / down per client and round (mean) |" in md
    for name, colour in (("accuracy", (0x1F, 0x77, 0xB4)), ("sites", (0x1F, 0x77, 0xB4)),
                         ("failures", (0xD6, 0x27, 0x28))):
        img = mpimg.imread(tmp_path / f"{name}.png")[..., :3]
        assert img.shape[0] > 300 and img.shape[1] > 600
        # the first series' colour (C0 lines, C3 bars) is drawn: a curve, not an empty frame
        hit = np.all(np.abs(img * 255 - np.array(colour)) < 30, axis=-1).sum()
        assert hit > 200, (name, hit)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_export_loads_into_the_model_with_the_same_accuracy(finished, tmp_path, fmt, cli) -> None:
    import torch

    from fedgrid.apps import datasets
    from fedgrid.apps.evaluate import evaluate
    from fedgrid.apps.models import build, get_params

    out = tmp_path / f"model.{fmt}"
    rc, _, err = cli("export", finished, "--round", "2", "--format", fmt, "--out", out)
    assert rc == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["round"] == 2 and meta["model"] == "cnn" and meta["input_shape"] == [1, 8, 8]
    if fmt == "safetensors":
        from safetensors.torch import load_file

        state = load_file(str(out))
    else:
        state = torch.load(out, weights_only=True)
    model = build("cnn", (1, 8, 8), 10, {})
    model.load_state_dict(state)  # strict: every name and shape matches
    row = ckpt.read_round(ckpt.round_path(finished, 2)).row
    test = datasets.load_test(ckpt.read_round(ckpt.round_path(finished, 2)).job["data"], 0)
    got = evaluate(model, get_params(model), test)
    assert got["accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-12)
    rc, _, err = cli("export", finished, "--round", "9")
    assert rc == 2 and "round 9 has no checkpoint (rounds on disk: 0..3" in err


def test_monitoring_database_records_every_task(finished) -> None:
    import sqlite3

    db = sqlite3.connect(finished / "monitoring.db")
    (n,) = db.execute("select count(*) from task where task_func_name = 'train_client'").fetchone()
    assert n == 18  # 6 clients x 3 rounds, failed tries included


def test_api_runs_more_rounds_and_schedules(finished, tmp_path, make_job) -> None:
    stop = threading.Event()
    job = make_job(tmp_path / "run", rounds=1, train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                   sites=[{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}])
    assert fedgrid.run(job, quiet=True).rounds_done == 1
    assert fedgrid.run(job, quiet=True, more=2).rounds_done == 3
    n = fedgrid.schedule(job, cron="* * * * * *", rounds_per_run=1, base=tmp_path, firings=2, stop=stop)
    assert n == 2 and fedgrid.status(tmp_path / "run")["rounds_done"] == 5
