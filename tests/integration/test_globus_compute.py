"""Globus Compute sites: the emulated endpoint (a real GlobusComputeEngine on this machine)
enforcing the hosted service's limits, and runs through it (a deployed endpoint's sdk objects:
tests/unit/test_globus_compute_sdk.py)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedgrid.executors import globus_compute as gc
from fedgrid.executors.gc_emulator import EmulatedEndpoint, TaskPayloadTooLarge
from fedgrid.flow.commands.cli import main
from fedgrid.flow.config import parse_job


def _site(**spec):
    return types.SimpleNamespace(name="gc", executor=gc.Spec(**spec))


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """A DataFlowKernel with one emulated Globus Compute site, shared by this module's tests (one
    start of the engine's interchange and worker processes). The first test's tasks go in while the
    engine is still starting; the last test shuts the endpoint down."""
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel

    run = tmp_path_factory.mktemp("gc")
    ex = gc.build(_site(emulate=True, workers=1), run)
    assert isinstance(ex.executor, EmulatedEndpoint)
    dfk = DataFlowKernel(Config(executors=[ex], strategy="none", run_dir=str(run / "parsl")))
    yield dfk
    dfk.cleanup()


def _app(dfk, fn):
    from parsl.app.app import python_app

    return python_app(fn, executors=["gc"], data_flow_kernel=dfk)


def test_emulated_endpoint_runs_tasks_and_returns_remote_errors(emulated) -> None:
    # (the module's first tasks: submitted right after the endpoint was built, while its start thread
    # runs -- imports raced that thread once)
    assert _app(emulated, np.add)(np.ones(3), 2).result().tolist() == [3.0, 3.0, 3.0]
    # functions travel by reference (the endpoint imports them), so use an importable one
    with pytest.raises(ValueError, match="cannot reshape"):
        _app(emulated, np.reshape)(np.ones(3), (2, 2)).result()


def test_a_site_aggregation_app_is_a_globus_compute_task_like_any_other(emulated, tmp_path) -> None:
    """round.aggregate: site on an endpoint: the aggregator runs there, after the driver's future
    for "the site's clients are done" resolves (a DAG edge Parsl resolves before submitting)."""
    from concurrent.futures import Future

    from fedgrid.apps.siteagg import SiteAggTask, aggregate_site
    from fedgrid.apps.store import Store

    store = Store(str(tmp_path / "site"))
    like = {"w": np.zeros(4, np.float32)}
    for c in (0, 1):
        store.put({"w": np.full(4, float(c), np.float32)}, f"r/c{c}")
    settled: Future = Future()
    task = SiteAggTask(site="gc", round=1, keys={0: "r/c0", 1: "r/c1"}, store=store.url, params=like)
    fut = _app(emulated, aggregate_site)(task, settled)
    assert not fut.done()  # not submitted before the site's clients are done
    settled.set_result({0: (1, 1), 1: (3, 1)})  # what the driver accepted: the counts it weighs by
    p = fut.result(timeout=60)
    assert (p.clients, p.examples) == ([0, 1], 4) and p.params["w"].tolist() == [0.75] * 4


def test_emulated_endpoint_enforces_the_service_payload_and_result_limits(emulated) -> None:
    from globus_compute_sdk.errors import TaskExecutionFailed

    big = np.ones(3 * 2**20, dtype=np.float32)  # 12 MB of arguments
    with pytest.raises(TaskPayloadTooLarge, match="TASK_PAYLOAD_TOO_LARGE"):
        _app(emulated, np.add)(big, 1).result()
    with pytest.raises(TaskExecutionFailed, match="MaxResultSizeExceeded"):
        _app(emulated, np.zeros)(4 * 2**20).result()  # a 32 MB result
    assert _app(emulated, np.add)(np.ones(2), 1).result().tolist() == [2.0, 2.0]  # the site still works


TRAIN = {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9}  # (mlp: 0.84 after two rounds)


def test_mixed_sites_train_exactly_like_one_kind(tmp_path: Path, monkeypatch, make_job) -> None:
    """Three kinds of site in one run (HTEX worker processes, threads, an emulated Globus Compute
    endpoint) give exactly the model one kind gives (threads here; HTEX against threads, bit for
    bit: test_strategies_run's SCAFFOLD resume). The mixed run also sends every param by reference
    through a relative store path: Globus Compute workers run in their own task directory, and the
    path must not follow them there (refs carry absolute paths)."""
    from fedgrid.flow.rounds.runner import run

    monkeypatch.chdir(tmp_path)
    mixed = [{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 2},
             {"name": "b", "executor": {"kind": "local", "workers": 1}, "clients": 2},
             {"name": "g", "executor": {"kind": "globus_compute", "emulate": True}, "clients": 2}]
    plain = [{"name": n, "executor": {"kind": "local", "workers": 1}, "clients": 2} for n in "abg"]
    acc, rows = {}, {}
    for name, sites, store in (("mixed", mixed, {"url": "shared", "mode": "always"}), ("plain", plain, {})):
        job = parse_job(make_job(tmp_path / name, sites=sites, rounds=2, store=store, model="mlp", train=TRAIN))
        rows[name] = run(job, quiet=True).rows
        assert [r["clients_ok"] for r in rows[name]] == [6, 6]
        acc[name] = [r["test_accuracy"] for r in rows[name]]
    workers = {u["site"]: u["worker"] for u in rows["mixed"][-1]["updates"]}
    assert len(set(workers.values())) == 3  # three different processes (two HTEX sites: test_resume)
    assert acc["mixed"] == acc["plain"]
    assert acc["mixed"][-1] > 0.6
    # the relative store: every client answered by reference, and the round objects were swept
    assert rows["mixed"][0]["clients_ok"] == 6 and rows["mixed"][0]["bytes_by_ref"] > 0
    assert (tmp_path / "shared").is_dir() and not any((tmp_path / "shared").rglob("client-*"))


def _big_job(job_dict, tmp_path: Path, **store) -> Path:
    # mlp on 8x8 digits with 56,000 hidden units: 4.2 M float32 params, 16.8 MB (> the 10 MB limit)
    raw = job_dict(tmp_path / "run", rounds=2, model={"name": "mlp", "kwargs": {"hidden": 56000}},
                   train={"epochs": 1, "batch_size": 64, "lr": 0.01},
                   data={"dataset": "digits", "clients": 2, "partition": {"kind": "iid"}},
                   round={"min_clients": 2, "deadline_s": 300},
                   sites=[{"name": "g", "executor": {"kind": "globus_compute", "emulate": True}}], store=store)
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_large_model_trains_through_emulated_globus_compute_by_reference(tmp_path: Path, capsys, make_job) -> None:
    from fedgrid.flow.persist.table import read_rows

    job = _big_job(make_job, tmp_path)
    assert main(["check", str(job)]) == 0
    out = capsys.readouterr().out
    assert "4,200,010 params" in out and "by reference" in out
    assert main(["run", str(job), "--quiet"]) == 0
    rows = read_rows(tmp_path / "run")
    assert [r["clients_ok"] for r in rows] == [2, 2]
    assert all(r["bytes_by_ref"] >= 4 * 4_200_010 * 4 for r in rows)  # 2 params down + 2 updates up
    assert rows[-1]["test_accuracy"] > 0.5
    assert not any((tmp_path / "run/store").rglob("client-*"))  # the rounds' objects were cleaned up


def test_large_model_without_references_fails_with_the_payload_limit(tmp_path: Path, capsys, make_job) -> None:
    job = _big_job(make_job, tmp_path, mode="never")
    assert main(["run", str(job), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "store.mode" in err and "16.0 MB" in err and "10 MB per task" in err
    assert "Traceback" not in err


def test_emulated_endpoint_shutdown_fails_the_tasks_still_running(emulated) -> None:
    """A shutdown fails the tasks still running instead of leaving their futures hanging, and refuses
    new ones. (Last in this module, as pytest runs it: it ends the module's endpoint.)"""
    import time

    ep = emulated.executors["gc"].executor
    assert isinstance(ep, EmulatedEndpoint)
    assert ep.submit(np.add, np.ones(2), 1).result(timeout=120).tolist() == [2.0, 2.0]
    slow = ep.submit(time.sleep, 60)
    ep.shutdown()
    with pytest.raises(RuntimeError, match="shut down before the task finished"):
        slow.result(timeout=5)
    with pytest.raises(RuntimeError, match="shut down"):
        ep.submit(np.add, 1, 1).result(timeout=5)
