"""Site kinds: each module turns a site's YAML `executor` block into a Parsl executor.

Add a kind by writing a module with ``build(site, run_dir) -> parsl executor`` and listing it in
:data:`KINDS`; modules are imported only when a job uses them, so optional packages stay optional.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

KINDS = {"local": "fedgrid.executors.local", "htex": "fedgrid.executors.htex"}


def build_executor(site: Any, run_dir: Path):
    """The Parsl executor for one site, labelled with the site's name."""
    return importlib.import_module(KINDS[site.executor.kind]).build(site, run_dir)


def describe(site: Any) -> str:
    return importlib.import_module(KINDS[site.executor.kind]).describe(site)
