"""A real htex pool with GPU pins, on a machine without a GPU: a stand-in ``nvidia-smi`` that lists
two GPUs makes Parsl's workers apply their own GPU sharing (CUDA_VISIBLE_DEVICES = k // (workers //
GPUs)), which would put all four workers of ``gpus: [0, 1], workers_per_gpu: 2`` on GPU 0; each
worker must still end up on its own pin, and all four must start on this 2-core machine."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from fedgrid.executors import htex

FAKE_NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: Stand-in (UUID: GPU-00000000-0000-0000-0000-000000000000)"
echo "GPU 1: Stand-in (UUID: GPU-11111111-1111-1111-1111-111111111111)"
"""


@pytest.fixture
def two_gpus_listed(tmp_path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_every_worker_of_a_shared_gpu_site_starts_on_its_own_pin(two_gpus_listed, tmp_path: Path) -> None:
    from gpu_probe import probe  # tests/clients: importable by the workers too
    from parsl import python_app
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel

    spec = htex.Spec(gpus=[0, 1], workers_per_gpu=2)
    ex = htex.build(types.SimpleNamespace(name="lab", executor=spec), tmp_path)
    dfk = DataFlowKernel(Config(executors=[ex], strategy="none", run_dir=str(tmp_path / "parsl")))
    try:
        app = python_app(probe, data_flow_kernel=dfk, executors=["lab"])
        meet = tmp_path / "meet"
        meet.mkdir()
        seen = [f.result(timeout=120) for f in [app(str(meet), 4) for _ in range(4)]]
    finally:
        dfk.cleanup()
    by_rank = {s["rank"]: s for s in seen}
    assert sorted(by_rank) == ["0", "1", "2", "3"]  # four workers at once on two cores
    assert [by_rank[r]["parsl"] for r in "0123"] == ["0", "0", "0", "0"]  # Parsl's sharing: all on GPU 0
    assert [by_rank[r]["visible"] for r in "0123"] == ["0", "0", "1", "1"]  # fedgrid's pins restored
