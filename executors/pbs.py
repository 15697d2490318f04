"""`pbs`: Parsl HTEX whose worker pools run in PBS Pro batch jobs (PBSProProvider).

Blocks are submitted with ``qsub`` as ``#PBS -l select=<nodes>:ncpus=<cpus_per_node><select_options>``;
``gpus_per_node`` adds ``:ngpus=N`` there (unless select_options already asks for ngpus) and gives
each worker one GPU. Pools start with ``mpiexec`` by default, one per node. The constructor runs no
command, so a dry run builds exactly what a real run would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fedgrid.executors import hpc


class Spec(hpc.BatchHtexSpec):
    kind: Literal["pbs"] = "pbs"
    queue: str | None = None
    account: str | None = None  # project to charge (#PBS -A)
    cpus_per_node: hpc.PosInt = 1  # ncpus in the select statement; default workers_per_node derives from it
    select_options: str = ""  # appended to the select statement, e.g. "mem=64gb:system=polaris"
    launcher: hpc.LauncherName = "mpiexec"

    def node_cores(self) -> int | None:
        return self.cpus_per_node

    def select(self) -> str:
        """select_options with ``ngpus`` added when gpus_per_node asks for GPUs."""
        parts = [p for p in self.select_options.lstrip(":").split(":") if p]
        if self.gpus_per_node and not any(p.startswith("ngpus=") for p in parts):
            parts.append(f"ngpus={self.gpus_per_node}")
        return ":".join(parts)


def provider_kwargs(spec: Spec) -> dict[str, Any]:
    """PBSProProvider's arguments other than the launcher, as plain (YAML-able) values."""
    return {"queue": spec.queue, "account": spec.account, "cpus_per_node": spec.cpus_per_node,
            "select_options": spec.select(), "walltime": spec.walltime, "scheduler_options": spec.scheduler_options,
            **hpc.block_kwargs(spec)}


def provider(spec: Spec, dry_run: bool = False):
    return hpc.batch_provider("PBSProProvider", provider_kwargs(spec), spec, dry_run)


def provider_config(spec: Spec) -> dict[str, Any]:
    """``engine.provider`` of a Globus Compute endpoint's config.yaml for this site."""
    return hpc.batch_provider_config("PBSProProvider", provider_kwargs(spec), spec)


def build(site: Any, run_dir: Path, dry_run: bool = False):
    return hpc.remote_htex(site, provider(site.executor, dry_run), site.executor, dry_run=dry_run)


def describe(site: Any) -> str:
    s: Spec = site.executor
    return hpc.describe_htex("PBS Pro", s, {"queue": s.queue, "account": s.account, "cpus_per_node": s.cpus_per_node,
                                        "select": s.select()})
