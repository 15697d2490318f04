"""`fedgrid check` and `fedgrid endpoint-config` on the shipped examples, and the transfer plan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from fedgrid.apps.datasets import FMNIST_DEFAULT_ROOT, fashion_mnist_missing
from fedgrid.flow.commands.cli import main
from fedgrid.flow.config import ConfigError, parse_job
from fedgrid.flow.persist import dataplane

REPO = Path(__file__).resolve().parents[2]
HYBRID = str(REPO / "examples" / "hybrid.yaml")

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-secret}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def _kubeconfig(monkeypatch, path: Path) -> None:
    """Point the kubernetes client at `path` (it reads $KUBECONFIG once, when first imported)."""
    monkeypatch.setenv("KUBECONFIG", str(path))
    kube_config = pytest.importorskip("kubernetes.config.kube_config")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


@pytest.fixture
def no_cluster_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    _kubeconfig(monkeypatch, tmp_path / "missing")


def test_hybrid_example_checks_and_reports_a_missing_kubeconfig(no_cluster_config, capsys) -> None:
    assert main(["check", HYBRID]) == 0
    out = capsys.readouterr().out
    assert "hpc: slurm -> HighThroughputExecutor" in out and "partition=gpu" in out
    assert "partner: globus_compute -> GlobusComputeExecutor" in out
    assert "warning: site 'cloud' (kubernetes): a run from this machine would fail" in out
    assert main(["check", HYBRID, "--strict"]) == 2


def test_hybrid_example_checks_clean_with_a_kubeconfig(tmp_path, monkeypatch, capsys) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(KUBECONFIG)
    _kubeconfig(monkeypatch, cfg)
    assert main(["check", HYBRID, "--strict"]) == 0
    out = capsys.readouterr().out
    assert "cloud: kubernetes -> HighThroughputExecutor" in out and "warning" not in out


def test_missing_optional_package_names_the_extra(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    assert main(["check", HYBRID]) == 2
    err = capsys.readouterr().err
    assert "site 'cloud' (kind kubernetes)" in err and "pip install 'fedgrid[kubernetes]'" in err


@pytest.mark.skipif(bool(fashion_mnist_missing(FMNIST_DEFAULT_ROOT)), reason="Fashion-MNIST idx files not installed")
def test_rehearse_example_checks(capsys) -> None:
    assert main(["check", str(REPO / "examples" / "rehearse.yaml"), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "partner: globus_compute -> GlobusComputeExecutor; Globus Compute endpoint, emulated here" in out


def test_endpoint_config_for_a_multi_user_slurm_endpoint(capsys) -> None:
    assert main(["endpoint-config", "partner", "--job", HYBRID]) == 0
    out = capsys.readouterr().out
    assert "user_config_template.yaml.j2" in out
    doc = yaml.safe_load(out)
    engine = doc["engine"]
    assert engine["type"] == "GlobusComputeEngine" and engine["max_workers_per_node"] == 4
    prov = engine["provider"]
    assert prov["type"] == "SlurmProvider" and prov["launcher"] == {"type": "SrunLauncher"}
    assert prov["partition"] == "{{ partition }}" and prov["account"] == "{{ account }}"
    assert prov["cores_per_node"] == 16
    assert "source /home/labuser/fedgrid-venv/bin/activate" in prov["worker_init"]


def test_endpoint_config_refuses_other_kinds_and_unknown_sites(capsys) -> None:
    assert main(["endpoint-config", "hpc", "--job", HYBRID]) == 2
    assert "expected globus_compute" in capsys.readouterr().err
    assert main(["endpoint-config", "nope", "--job", HYBRID]) == 2
    assert "no site named 'nope'" in capsys.readouterr().err


def _job(make_job, sites, **store):
    return parse_job(make_job(Path("/tmp/r"), sites=sites, store=store), "job.yaml")


def test_transfer_plan(make_job, tmp_path) -> None:
    gc = {"name": "g", "executor": {"kind": "globus_compute", "emulate": True}, "clients": 3}
    here = {"name": "h", "executor": {"kind": "htex"}, "clients": 3}
    hpc = {"name": "s", "executor": {"kind": "slurm", "partition": "x"}, "clients": 3}
    small, big = 2 * 2**20, int(7.5 * 2**20)
    tp = dataplane.plan(_job(make_job, [gc, here]), small, tmp_path)
    assert not tp.any_ref() and tp.store_url is None
    tp = dataplane.plan(_job(make_job, [gc, here]), big, tmp_path)  # over GC's limit, under inline_max_mb
    assert tp.by_ref == {"g": True, "h": False} and tp.store_url == str(tmp_path / "store")
    tp = dataplane.plan(_job(make_job, [gc, here], mode="always"), small, tmp_path)
    assert tp.by_ref == {"g": True, "h": True} and tp.ref_above == {"g": 0, "h": 0}
    with pytest.raises(ConfigError, match=r"store\.mode: is never.*'g'.*10 MB"):
        dataplane.plan(_job(make_job, [gc, here], mode="never"), big, tmp_path, "job.yaml")
    # a remote site cannot reach <run_dir>/store: the job needs a store.url
    with pytest.raises(ConfigError, match=r"store\.url: site\(s\) \['s'\]"):
        dataplane.plan(_job(make_job, [here, hpc]), 20 * 2**20, tmp_path, "job.yaml")
    tp = dataplane.plan(_job(make_job, [here, hpc], url="s3://bucket/fl"), 20 * 2**20, tmp_path)
    assert tp.store_url == "s3://bucket/fl"
