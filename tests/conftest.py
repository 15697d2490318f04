"""Shared fixtures: small real jobs on real Parsl executors, written to tmp dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The HTEX worker pool and interchange are started with this interpreter; keep its bin on PATH too.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
# tests/clients holds client code written as a user would (`client: sgd_client:SGDClient`): importable
# here and, through PYTHONPATH, in the worker processes a run starts
CLIENTS = str(Path(__file__).resolve().parent / "clients")
sys.path.insert(0, CLIENTS)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (CLIENTS, os.environ.get("PYTHONPATH")) if p)


def job_dict(run_dir: Path, **over) -> dict:
    job = {
        "name": "t", "rounds": 3, "seed": 0, "model": "cnn",
        "data": {"dataset": "digits", "clients": 6, "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "train": {"epochs": 5, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
        "round": {"min_clients": 4, "deadline_s": 120},
        "sites": [{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 3},
                  {"name": "b", "executor": {"kind": "htex", "workers": 1}, "clients": 3}],
        "checkpoint": {"dir": str(run_dir)},
    }
    for k, v in over.items():
        job[k] = v
    return job


@pytest.fixture
def write_job(tmp_path):
    def write(**over) -> Path:
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job_dict(tmp_path / "run", **over)))
        return path
    return write


@pytest.fixture
def cli(capsys):
    """The `fedgrid` command line in this process (`main`, what the `fedgrid` script runs), returning
    (exit code, stdout, stderr). No second interpreter importing torch, Parsl and sklearn again (a few
    CPU seconds each on a busy 2-core machine); the tests that need a process of their own (a
    signal, a second holder of the run lock, the process's own exit code) start one."""
    from fedgrid.flow.commands.cli import main

    def call(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err
    return call


@pytest.fixture(scope="session")
def make_job():
    """`job_dict` itself, for tests that build several jobs (tests is not an importable package)."""
    return job_dict


@pytest.fixture
def kubeconfig(monkeypatch, tmp_path):
    """A kubeconfig that authenticates with a plain token: loading it runs nothing."""
    kube_config = pytest.importorskip("kubernetes.config.kube_config")
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": {"server": "https://k8s.invalid:6443"}}],
           "users": [{"name": "u", "user": {"token": "t"}}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))


@pytest.fixture
def sigkilled_in(tmp_path):
    """`kill(job, run_dir, rnd)`: run `job` with the `fedgrid` CLI in a process of its own, SIGKILL
    it once round `rnd` has started (the job holds that round open with a `hold_at` fault), check
    the round was not checkpointed, and release the held clients for the resumed run."""
    import signal
    import subprocess
    import time

    def kill(job: dict, run_dir: Path, rnd: int) -> None:
        from fedgrid.flow.persist import checkpoint as ckpt

        job_file = tmp_path / "killed.yaml"
        job_file.write_text(yaml.safe_dump(job))
        first = subprocess.Popen([sys.executable, "-m", "fedgrid.flow.commands.cli", "run", str(job_file), "--quiet"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        deadline = time.monotonic() + 180
        while not (run_dir / "faults" / f"started-r{rnd:06d}").exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"the driver never reached round {rnd}"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert not ckpt.round_path(run_dir, rnd).exists()
        (run_dir / "faults" / "release").touch()
    return kill


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or name lookup fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"touched the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "gethostbyname", refuse)
