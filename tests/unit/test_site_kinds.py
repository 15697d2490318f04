"""Site kinds are modules with one explicit interface (fedgrid.executors.common.SiteKind) and
optional capabilities (BatchKind, Disposable, EndpointProvider), read with isinstance, never with
hasattr checks or lists of kind names."""

from __future__ import annotations

import types

import pytest

from fedgrid.executors import KINDS, batch_kinds, kind_module, site_workers, workers_per_node
from fedgrid.executors.common import BatchKind, Disposable, EndpointProvider, SiteKind


def test_every_kind_is_a_site_kind_and_its_capabilities_are_what_it_defines():
    assert set(KINDS) >= {"htex", "local", "slurm", "pbs", "kubernetes", "aws", "globus_compute", "parsl"}
    for k in KINDS:
        assert isinstance(kind_module(k), SiteKind), k
    assert {k for k in KINDS if isinstance(kind_module(k), BatchKind)} == {"slurm", "pbs"}
    assert {k for k in KINDS if isinstance(kind_module(k), Disposable)} == {"globus_compute"}
    assert {k for k in KINDS if isinstance(kind_module(k), EndpointProvider)} >= {"slurm", "pbs", "kubernetes", "aws"}
    assert {name: m.COMMAND for name, m in batch_kinds().items()} == {"Slurm": "squeue", "PBS": "qstat"}


def test_a_module_without_the_interface_is_refused(monkeypatch):
    import importlib

    fake = types.ModuleType("fedgrid.executors.nokind")
    fake.build = lambda site, run_dir, dry_run=False: None  # no Spec, no describe
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name: fake if name.endswith(".nokind") else real(name))
    with pytest.raises(TypeError, match="not a site kind"):
        kind_module("nokind")


@pytest.mark.parametrize(("kind", "options", "per_node", "site"), [
    ("htex", {"workers": 3}, 3, 3),
    ("local", {"workers": 2}, 2, 2),
    ("globus_compute", {"emulate": True, "workers": 4}, 4, 4),
    ("slurm", {"workers_per_node": 4, "nodes_per_block": 2, "max_blocks": 3}, 4, 24),
    ("pbs", {"workers_per_node": 2, "max_blocks": 2}, 2, 4),
])
def test_workers_come_from_each_kinds_own_answer(kind, options, per_node, site):
    spec = kind_module(kind).Spec(kind=kind, **options)
    assert workers_per_node(spec) == per_node
    assert site_workers(spec) == site
