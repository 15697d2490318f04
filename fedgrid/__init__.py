"""fedgrid: federated learning whose rounds are Parsl app DAGs across HPC, cloud and lab sites.

The Python API (flow/commands/api.py) is importable from here: ``fedgrid.run``, ``fedgrid.submit``
(a run inside a Parsl workflow, as a Future), ``fedgrid.schedule``, ``fedgrid.status``,
``fedgrid.report``, ``fedgrid.export``, ``fedgrid.load_job``, ``fedgrid.parse_job``, and
``fedgrid.DependencyFailed``. They are loaded on first use, so ``import fedgrid`` stays cheap (no torch,
no Parsl) for the train apps that run at the sites.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["run", "submit", "schedule", "status", "report", "export", "load_job", "parse_job", "DependencyFailed"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fedgrid.flow.commands import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedgrid' has no attribute {name!r}")
