"""Site kinds: each module turns a site's YAML `executor` block into a Parsl executor.

A kind is a module under this package with ``Spec`` (its options and capabilities), ``build(site,
run_dir, dry_run=False)`` and ``describe(site)``; see :mod:`fedgrid.executors.common`. Every module
here that defines a ``Spec`` is a kind, so a new kind is one new file. Modules are imported for
their ``Spec`` when a job is validated, but Parsl providers and optional packages (kubernetes,
boto3) are imported only inside ``build``, so a job that does not use a kind never needs them.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from fedgrid.executors.common import BatchKind, MissingExtra, SiteKind, SpecBase

# shared code of several kinds, not kinds themselves
_HELPERS = frozenset({"batch", "common", "hpc", "gc_emulator", "ic_guard", "pool_start", "parsl_api"})

# client libraries Parsl imports whenever it is imported (its Kubernetes provider, its Globus
# Compute executor: apps/lean.py CLIENTS), with the kinds whose sites use them (a `parsl` factory may
# build either)
_SPARED = {"kubernetes": frozenset({"kubernetes", "parsl"}),
           "globus_compute_sdk": frozenset({"globus_compute", "parsl"})}


def _discover() -> tuple[str, ...]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _HELPERS)
    return tuple(n for n in names if hasattr(importlib.import_module(f"{__name__}.{n}"), "Spec"))


KINDS = _discover()

__all__ = ["KINDS", "MissingExtra", "build_executor", "describe", "kind_module", "spare_imports", "specs",
           "workers_per_node"]


def spare_imports(kinds: set[str]) -> list[str]:
    """Tell Parsl that the client libraries no site of `kinds` uses are not installed, so its
    import skips them (Kubernetes' and Globus Compute's: about 0.7 s of every run's start, before
    the first site can start). For a process that runs one job and nothing else (``fedgrid run``):
    a library spared here cannot be imported later in the process. Returns those spared."""
    from fedgrid.apps import lean

    return lean.spare(m for m, users in _SPARED.items() if not kinds & users)


def kind_module(kind: str) -> SiteKind:
    """The module of a site kind, checked against the interface every kind provides."""
    module = importlib.import_module(f"fedgrid.executors.{kind}")
    if not isinstance(module, SiteKind):
        raise TypeError(f"fedgrid.executors.{kind} is not a site kind (Spec, build and describe)")
    return module


def batch_kinds() -> dict[str, BatchKind]:
    """The kinds whose blocks are batch jobs, by their scheduler's name ("Slurm": the slurm module)."""
    return {m.SCHEDULER: m for k in KINDS if isinstance(m := kind_module(k), BatchKind)}


def specs() -> list[type]:
    """The ``Spec`` class of every kind, for the job schema's discriminated union."""
    return [kind_module(k).Spec for k in KINDS]


def build_executor(site: Any, run_dir: Path, dry_run: bool = False):
    """The (unstarted) Parsl executor for one site, labelled with the site's name.

    ``dry_run`` builds everything a real run would but never contacts a remote service (used by
    `fedgrid check`): a Globus Compute site gets an sdk client that has not logged in.
    """
    return kind_module(site.executor.kind).build(site, run_dir, dry_run=dry_run)


def workers_per_node(spec: SpecBase) -> int | None:
    """Workers a kind's options give one node: `workers` (local kinds) or, for remote HTEX kinds,
    the count derived from workers_per_node / cores per node; None when the kind has no such notion."""
    return spec.node_workers()


def site_workers(spec: SpecBase) -> int:
    """Workers a site can run at once: per node x nodes per block x blocks (1 when unknown, e.g. a
    Globus Compute endpoint whose workers are not visible from here)."""
    return spec.site_workers()


def describe(site: Any) -> str:
    return kind_module(site.executor.kind).describe(site)
