"""The client API (fedgrid.client): what a job's client code is checked for before a run, and what
the site does with what it returns."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedgrid.apps.client import Work
from fedgrid.apps.task import TrainTask, client_code
from fedgrid.apps.train import ClientCodeError, train_client
from fedgrid.apps.update import Failure
from fedgrid.flow.commands.cli import main
from fedgrid.flow.rounds import validate


def _job_file(tmp_path: Path, make_job, **over) -> Path:
    raw = make_job(tmp_path / "run", **{"sites": [{"name": "a", "executor": {"kind": "local"}, "clients": 6}],
                                        "train": {"epochs": 1, "batch_size": 32, "lr": 0.1}, **over})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _check(path: Path, capsys) -> tuple[int, list[str]]:
    code = main(["check", str(path)])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("client", "fragments"), [
    ("no_such_module_xyz:Client", ["client.path", "cannot import module 'no_such_module_xyz'"]),
    ("numpy_client:Nope", ["client.path", "module 'numpy_client' has no class 'Nope'"]),
    ("broken_clients:NoTrain", ["client.path", "broken_clients:NoTrain has no train()", "fedgrid.client.Client"]),
])
def test_a_client_that_cannot_be_used_fails_check_with_one_line(client, fragments, tmp_path, make_job, capsys):
    code, err = _check(_job_file(tmp_path, make_job, client=client), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error:")
    assert all(f in err[0] for f in fragments), err[0]


def test_fedgrid_run_refuses_a_client_that_cannot_be_imported_with_one_line(tmp_path, make_job):
    import subprocess
    import sys

    path = _job_file(tmp_path, make_job, client="no_such_module_xyz:Client")
    proc = subprocess.run([sys.executable, "-m", "fedgrid.flow.commands.cli", "run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: client.path: cannot import module 'no_such_module_xyz'")


def test_a_strategy_hook_the_client_does_not_honour_is_refused(tmp_path, make_job, capsys):
    # the numpy client paces (supports "steps") but has no proximal term
    code, err = _check(_job_file(tmp_path, make_job, client="numpy_client:NumpyLogReg",
                                 strategy={"name": "fedprox", "mu": 0.1}), capsys)
    assert code == 2 and len(err) == 1
    assert "does not support 'prox', which strategy fedprox needs" in err[0] and "supports" in err[0]
    code, err = _check(_job_file(tmp_path, make_job, client="numpy_client:NumpyLogReg",
                                 round={"min_clients": 4, "pace": "deadline"}), capsys)
    assert code == 0, err


def test_model_factories_without_arguments_work_and_bad_signatures_exit_2(tmp_path, make_job, capsys):
    from fedgrid.apps.models import build

    assert build("broken_clients:no_arg_factory", (1, 8, 8), 10, {})(__import__("torch").zeros(2, 64)).shape == (2, 10)
    assert _check(_job_file(tmp_path, make_job, model="broken_clients:no_arg_factory"), capsys)[0] == 0
    code, err = _check(_job_file(tmp_path, make_job, model="broken_clients:bad_factory"), capsys)
    assert code == 2 and len(err) == 1 and "cannot be called as the model factory" in err[0]


def test_a_model_factory_that_raises_stops_the_run_with_one_line(tmp_path, make_job):
    """(`fedgrid run` prints a ConfigError as one line and exits 2: tests/unit/test_config.py)"""
    from fedgrid.flow.config import ConfigError, load_job
    from fedgrid.flow.rounds.prepare import build_model

    job = load_job(_job_file(tmp_path, make_job, model="broken_clients:raising_factory"))
    with pytest.raises(ConfigError, match=r"model: broken_clients:raising_factory raised RuntimeError: no layer for "
                                          r"10 classes when called with input_shape=\(1, 8, 8\), num_classes=10"):
        build_model(job)


def test_custom_data_needs_client_code(tmp_path, make_job, capsys):
    data = {"dataset": "custom", "clients": 6}
    code, err = _check(_job_file(tmp_path, make_job, data=data), capsys)
    assert code == 2 and "data.dataset" in err[0] and "client" in err[0]
    assert _check(_job_file(tmp_path, make_job, data=data, client="numpy_client:NumpyLogReg"), capsys)[0] == 0


def _task(path: str, client: int = 0, **train) -> TrainTask:
    from numpy_client import NumpyLogReg

    params = NumpyLogReg(None).init_params()
    return TrainTask(client=client, site="a", round=1, clients=6, seed=0,
                     data={"dataset": "digits", "clients": 6, "partition": {"kind": "iid"}},
                     code=client_code(path), train={"epochs": 1, "batch_size": 32, "lr": 0.5, "threads": 1, **train},
                     params=params)


def test_a_numpy_client_trains_and_the_site_reports_its_metrics_and_steps():
    u = train_client(_task("numpy_client:NumpyLogReg"))
    assert u.num_examples == 300 and list(u.params) == ["w", "b"]  # 1797 digits / 6 clients (iid)
    assert u.extras["steps"] == 10 and 0.0 < u.metrics["accuracy"] <= 1.0  # ceil(300 / 32) batches
    paced = train_client(_task("numpy_client:NumpyLogReg", steps=3))
    assert paced.extras["steps"] == 3


def test_an_error_in_client_code_carries_its_type_message_place_and_traceback():
    with pytest.raises(ClientCodeError) as ei:
        train_client(_task("broken_clients:RaisesForClient2", client=2))
    e = ei.value
    assert str(e).startswith("ValueError: client 2 cannot read its data shard [at broken_clients.py:")
    assert "in train]" in str(e) and "Traceback (most recent call last)" in e.remote_traceback
    assert "raise ValueError" in e.remote_traceback
    f = Failure.of(2, "a", e)
    assert f.reason.startswith("ClientCodeError: ValueError: client 2 cannot read its data shard")
    import pickle

    back = pickle.loads(pickle.dumps(e))  # as it comes back from a worker process
    assert str(back) == str(e) and back.remote_traceback == e.remote_traceback


def test_train_results_that_do_not_fit_the_global_model_are_the_clients_failure(monkeypatch):
    from numpy_client import NumpyLogReg

    from fedgrid.client import Fit

    monkeypatch.setattr(NumpyLogReg, "train", lambda self, p, w: Fit(OrderedDict(w=p["w"]), 10))
    with pytest.raises(ValueError, match=r"returned params \['w'\], expected the global model's \['w', 'b'\]"):
        train_client(_task("numpy_client:NumpyLogReg", client=1))
    monkeypatch.setattr(NumpyLogReg, "train", lambda self, p, w: Fit(p, True))
    with pytest.raises(ValueError, match="num_examples True, expected an int > 0"):
        train_client(_task("numpy_client:NumpyLogReg", client=3))
    monkeypatch.setattr(NumpyLogReg, "train", lambda self, p, w: (p, 10))
    with pytest.raises(TypeError, match="returned tuple, expected fedgrid.client.Fit"):
        train_client(_task("numpy_client:NumpyLogReg", client=4))


@pytest.mark.parametrize("bad", [{"loss": float("nan")}, {"loss": float("inf")}, {"ok": True}, {"n": 10**400},
                                 {"bad name": 1.0}, {"x": "1.0"}, {f"m{i}": 1.0 for i in range(40)}, [1.0]])
def test_metrics_that_the_rounds_table_cannot_hold_are_rejected(bad):
    with pytest.raises(validate.InvalidUpdate, match="rejected: metric"):
        validate.metrics(bad)


def test_metrics_become_floats():
    assert validate.metrics({"rmse": np.float32(0.5), "n": np.int64(3), "r2": 1}) == {"rmse": 0.5, "n": 3.0, "r2": 1.0}


@pytest.mark.parametrize(("steps", "n", "bs", "seen"), [(10, 300, 32, 300), (3, 300, 32, 96), (11, 300, 32, 332),
                                                       (0, 300, 32, 0), (5, 0, 32, 0)])
def test_examples_seen_counts_the_short_last_batch_of_each_epoch(steps, n, bs, seen):
    w = Work(round=1, seed=0, settings={"batch_size": bs, "epochs": 1}, global_params=OrderedDict())
    assert w.examples_seen(steps, n) == seen


def test_federated_summary_is_the_example_weighted_mean_with_the_spread_across_clients():
    from fedgrid.apps.update import ClientEvaluation
    from fedgrid.flow.rounds.fedeval import summary

    evals = [ClientEvaluation(c, "a", 1, n, {"rmse": v}) for c, n, v in ((0, 10, 1.0), (1, 30, 2.0), (2, 60, 4.0))]
    evals[0].metrics["r2"] = 0.5  # a metric only one client reports is that client's
    out = summary(evals, [{"client": 3, "site": "a", "reason": "late"}], 1.5)
    assert out["fed_rmse"] == pytest.approx((10 * 1 + 30 * 2 + 60 * 4) / 100)
    assert out["fed_rmse_min"] == 1.0 and out["fed_rmse_p10"] == pytest.approx(1.2)  # numpy's linear percentile
    assert out["fed_r2"] == 0.5 and out["fed_examples"] == 100 and out["fed_failures"][0]["client"] == 3
    assert [c["client"] for c in out["fed_clients"]] == [0, 1, 2]


@pytest.mark.parametrize(("over", "fragments"), [
    ({"round": {"min_clients": 4, "federated_every": 2}}, ["data.holdout", "expected a value in (0, 1)"]),
    ({"round": {"min_clients": 4, "federated_every": 2}, "client": "sgd_client:SGDClient"},
     ["round.federated_every", "sgd_client:SGDClient has no evaluate(params)"]),
    ({"round": {"min_clients": 4, "federated_every": 2}, "strategy": "fedbuff", "data": {"holdout": 0.2}},
     ["round.federated_every", "strategy fedbuff has none"]),
])
def test_federated_evaluation_needs_clients_that_can_evaluate(over, fragments, tmp_path, make_job, capsys):
    if "data" in over:
        over = {**over, "data": {"dataset": "digits", "clients": 6, **over["data"]}}
    code, err = _check(_job_file(tmp_path, make_job, **over), capsys)
    assert code == 2 and len(err) == 1 and all(f in err[0] for f in fragments), err


def test_the_progress_line_shows_the_metric_the_job_names():
    from fedgrid.flow.rounds.progress import round_line

    row = {"round": 3, "clients_ok": 5, "clients_failed": 1, "seconds": 2.0, "train_loss": 0.5, "fed_rmse": 1.25}
    assert round_line(row, 10, "fed_rmse").startswith("round    3/10  fed_rmse 1.2500  train loss 0.5000")
    assert "fed_mae   -" in round_line(row, 10, "fed_mae")


def test_a_client_that_claims_a_hook_but_never_uses_it_fails_instead_of_training_plain_sgd(monkeypatch):
    from numpy_client import NumpyLogReg

    monkeypatch.setattr(NumpyLogReg, "supports", {"prox", "steps"})
    with pytest.raises(RuntimeError, match=r"needs \['prox'\] in local training, but .* never called work.corrections"):
        train_client(_task("numpy_client:NumpyLogReg", client=5, prox_mu=0.1))
    with pytest.raises(RuntimeError, match=r"does not support \['scaffold'\], which this round needs"):
        train_client(_task("numpy_client:NumpyLogReg", client=5, scaffold={"c": {}}))


def test_train_threads_is_applied_before_any_client_code_runs():
    import os

    import torch
    from broken_clients import CountsThreads

    before = torch.get_num_threads()
    try:
        for threads in (3, 1):
            CountsThreads.seen.clear()
            train_client(_task("broken_clients:CountsThreads", client=threads, threads=threads))
            assert CountsThreads.seen == [threads, threads] and os.environ["OMP_NUM_THREADS"] == str(threads)
    finally:
        from fedgrid.apps import train

        torch.set_num_threads(before)
        train._THREADS.clear()


@pytest.mark.parametrize(("over", "why"), [
    ({"client": "stateful_client:StatefulClient"}, "client stateful_client:StatefulClient keeps each client's state"),
    ({"personal": {"layers": ["fc*"]}}, "personal: keeps each client's personal layers"),
])
def test_client_state_on_a_site_that_cannot_reach_the_run_dir_needs_a_store_url(over, why, tmp_path, make_job, capsys):
    remote = [{"name": "s", "executor": {"kind": "slurm", "partition": "x"}, "clients": 6}]
    code, err = _check(_job_file(tmp_path, make_job, sites=remote, **over), capsys)
    assert code == 2 and len(err) == 1 and "store.url" in err[0] and why in err[0], err
    ok = _job_file(tmp_path, make_job, sites=remote, store={"url": str(tmp_path / "shared")}, **over)
    assert "store.url" not in "\n".join(_check(ok, capsys)[1])


def test_a_worker_keeps_at_most_keep_clients_client_objects_and_frees_the_rest():
    import gc
    import weakref

    from fedgrid.apps import sitestate
    from fedgrid.apps.train import _slot

    sitestate._SLOTS.clear()
    first = weakref.ref(_slot(_task("numpy_client:NumpyLogReg", client=0, keep_clients=2)).client)
    for c in range(6):
        train_client(_task("numpy_client:NumpyLogReg", client=c, keep_clients=2))
    assert sitestate.cached() == 2
    gc.collect()
    assert first() is None  # its data went with it
    sitestate._SLOTS.clear()


def test_personalization_that_cannot_work_is_refused_at_check_with_one_line(tmp_path, make_job, capsys):
    scaffold = _job_file(tmp_path, make_job, strategy="scaffold", personal={"layers": ["fc*"]},
                         train={"epochs": 1, "batch_size": 32, "lr": 0.1, "momentum": 0.0})
    code, err = _check(scaffold, capsys)
    assert code == 2 and len(err) == 1 and "personal.layers" in err[0] and "control variates" in err[0], err
    rep = _job_file(tmp_path, make_job, client="numpy_client:NumpyLogReg", personal={"layers": ["w"], "head_epochs": 2})
    code, err = _check(rep, capsys)
    assert code == 2 and len(err) == 1 and "'head', which personal.head_epochs needs" in err[0], err


def test_a_federated_metric_that_would_overwrite_the_rows_own_fields_is_rejected():
    from fedgrid.apps.update import ClientEvaluation
    from fedgrid.flow.rounds.fedeval import _checker
    from fedgrid.flow.rounds.validate import InvalidUpdate

    check = _checker(3)
    assert check(1, "a", ClientEvaluation(client=1, site="a", round=3, num_examples=4, metrics={"acc": 0.5}))
    with pytest.raises(InvalidUpdate, match="'clients' is a name the row keeps"):
        check(1, "a", ClientEvaluation(client=1, site="a", round=3, num_examples=4, metrics={"clients": 1.0}))


def test_personal_layers_are_resolved_at_check(tmp_path, make_job, capsys):
    code, err = _check(_job_file(tmp_path, make_job, personal={"layers": ["norm"]}), capsys)  # a cnn without norm
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'job.yaml'}: personal.layers: "
                                                             "'norm' matches none"), err
    bn = {"name": "cnn", "kwargs": {"norm": "batch"}}
    ok = _job_file(tmp_path, make_job, personal={"layers": ["norm"]}, model=bn)
    assert main(["check", str(ok)]) == 0
    assert "personal (kept at each client): 10 tensors" in capsys.readouterr().out
