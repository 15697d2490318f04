"""Globus Compute sites without an engine: the real sdk objects for a deployed endpoint (no login)
and the site options' validation (the emulated endpoint: tests/integration/test_globus_compute.py)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from fedgrid.executors import globus_compute as gc
from fedgrid.flow.commands.plan import dry_build
from fedgrid.flow.config import ConfigError, parse_job

EP = "5e6f5f7c-1111-4a2b-9c3d-0123456789ab"


def _site(**spec):
    return types.SimpleNamespace(name="gc", executor=gc.Spec(**spec))


def test_deployed_endpoint_builds_parsl_globus_compute_executor_without_logging_in(tmp_path, monkeypatch) -> None:
    from globus_compute_sdk import Executor
    from parsl.executors import GlobusComputeExecutor

    monkeypatch.setenv("HOME", str(tmp_path))  # no stored tokens: a login attempt would fail the test
    site = _site(endpoint=EP, user_endpoint_config={"account": "abc", "walltime": "00:30:00"},
                 resource_specification={"num_nodes": 1})
    ex = dry_build(site, tmp_path)
    assert isinstance(ex, GlobusComputeExecutor) and ex.label == "gc"
    assert type(ex.executor) is Executor
    assert str(ex.executor.endpoint_id) == EP
    assert ex.user_endpoint_config == {"account": "abc", "walltime": "00:30:00"}
    assert ex.resource_specification == {"num_nodes": 1}


def test_spec_validation(make_job) -> None:
    with pytest.raises(ValueError, match="UUID"):
        gc.Spec(endpoint="not-a-uuid")
    with pytest.raises(ValueError, match="required"):
        gc.Spec()
    with pytest.raises(ValueError, match="valid keys"):
        gc.Spec(emulate=True, provider={"kind": "slurm", "partitoin": "x"})
    assert gc.Spec(emulate=True).endpoint is None
    raw = make_job(Path("/tmp/r"), sites=[{"name": "g", "executor": {"kind": "globus_compute", "endpoint": "x"}}])
    with pytest.raises(ConfigError, match=r"sites\.0\.executor\.endpoint: expected an endpoint UUID"):
        parse_job(raw, "job.yaml")
