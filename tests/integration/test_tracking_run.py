"""Tracking in real runs: MLflow (its local SQLite store) and TensorBoard event files, across a
resume, read back with MLflow's own client and with tbparse."""

from __future__ import annotations

import json

from fedgrid.flow.config import parse_job
from fedgrid.flow.rounds.runner import run

SITES = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 4}]


def _job(tmp_path, make_job, rounds: int):
    return parse_job(make_job(tmp_path / "run", rounds=rounds, model="mlp", sites=SITES,
                              data={"dataset": "digits", "clients": 4, "partition": {"kind": "iid"}},
                              train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                              round={"min_clients": 3, "deadline_s": 120, "eval_every": 1},
                              tracking={"mlflow": {"experiment": "fl"}, "tensorboard": True}))


def test_a_resumed_run_continues_its_mlflow_run_and_event_files_without_a_step_twice(tmp_path, make_job):
    from mlflow.tracking import MlflowClient
    from tbparse import SummaryReader

    first = _job(tmp_path, make_job, 2)
    run(first, quiet=True)
    run_dir = first.run_dir(tmp_path)
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]
    rows = run(_job(tmp_path, make_job, 4), quiet=True).rows  # resumes at round 2
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == run_id  # the same MLflow run

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.params["train.lr"] == "0.05"
    assert len(client.search_runs([got.info.experiment_id])) == 1
    for key in ("clients_ok", "test_accuracy", "bytes_up", "seconds"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3, 4], key  # every round once
    acc = {m.step: m.value for m in client.get_metric_history(run_id, "test_accuracy")}
    assert acc == {r["round"]: r["test_accuracy"] for r in rows}  # what rounds.parquet says
    arts = {a.path for a in client.list_artifacts(run_id, "report")} | {a.path for a in client.list_artifacts(run_id,
                                                                                                           "model")}
    assert {"report/accuracy.png", "model/model-round-000004.safetensors"} <= arts

    scalars = SummaryReader(str(run_dir / "tensorboard")).scalars
    clients_ok = scalars[scalars.tag == "clients_ok"]
    assert sorted(clients_ok.step) == [1, 2, 3, 4]
    tb_acc = scalars[scalars.tag == "test_accuracy"].set_index("step")["value"].to_dict()
    assert all(abs(tb_acc[r] - acc[r]) < 1e-6 for r in acc)


def test_a_tracking_server_that_is_down_never_stops_training(tmp_path, make_job, caplog, monkeypatch):
    """Nothing listens on the URI: the run trains all its rounds and says tracking fell behind."""
    import logging

    import mlflow.tracking  # noqa: F401 - imported here, so the first refused call comes within the run's seconds

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # (MLflow's own retries would take minutes)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    job = parse_job(make_job(tmp_path / "down", rounds=2, model="mlp", sites=SITES,
                             data={"dataset": "digits", "clients": 4, "partition": {"kind": "iid"}},
                             train={"epochs": 1, "batch_size": 32, "lr": 0.05}, round={"min_clients": 3},
                             tracking={"mlflow": {"uri": "http://127.0.0.1:9"}, "retry_s": 0.05, "drain_s": 1}))
    with caplog.at_level(logging.WARNING, logger="fedgrid"):
        res = run(job, quiet=True)
    assert res.rounds_done == 2 and [r["clients_ok"] for r in res.rows] == [4, 4]
    assert "tracking: mlflow failed" in caplog.text and "did not catch up" in caplog.text
