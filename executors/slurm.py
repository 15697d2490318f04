"""`slurm`: Parsl HTEX whose worker pools run in Slurm batch jobs (SlurmProvider).

The driver (or a Globus Compute endpoint, via :func:`provider_config`) submits blocks with
``sbatch``; each block's pools start with ``srun`` by default so one pool runs per node.
``SlurmProvider.__init__`` runs ``sacct -X`` (a call to the cluster's accounting daemon) to choose
between sacct and squeue for status polling; a dry run builds it without running that command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fedgrid.executors import batch, hpc, parsl_api

SCHEDULER = "Slurm"
COMMAND = "squeue"


class Spec(hpc.BatchHtexSpec):
    kind: Literal["slurm"] = "slurm"
    """Worker pools in Slurm batch jobs (Parsl's HTEX with a SlurmProvider)."""
    partition: str | None = None
    """The Slurm partition (`--partition`)."""
    account: str | None = None
    """The account to charge (`--account`)."""
    qos: str | None = None
    """The quality of service (`--qos`)."""
    constraint: str | None = None
    """`--constraint`, e.g. `gpu` or `a100`."""
    clusters: str | None = None
    """`--clusters`, for a federated Slurm."""
    cores_per_node: hpc.PosInt | None = None
    """`--cpus-per-task` for the pool; the default `workers_per_node` derives from it."""
    mem_per_node: hpc.PosInt | None = None
    """Memory per node in GB (`--mem`)."""
    exclusive: bool = True
    """Whole nodes (`--exclusive`), so pools do not share nodes with other jobs."""
    launcher: hpc.LauncherName = "srun"
    """How a batch job starts its worker pools on its nodes (a Parsl launcher)."""

    def node_cores(self) -> int | None:
        return self.cores_per_node

    def pool_cores(self) -> int | None:
        return self.cores_per_node


def provider_kwargs(spec: Spec) -> dict[str, Any]:
    """SlurmProvider's arguments other than the launcher, as plain (YAML-able) values."""
    return {"partition": spec.partition, "account": spec.account, "qos": spec.qos, "constraint": spec.constraint,
            "clusters": spec.clusters, "cores_per_node": spec.cores_per_node, "mem_per_node": spec.mem_per_node,
            "gpus_per_node": spec.gpus_per_node or None, "exclusive": spec.exclusive, "walltime": spec.walltime,
            "scheduler_options": spec.scheduler_options, **hpc.block_kwargs(spec)}


def provider(spec: Spec, dry_run: bool = False):
    p = hpc.batch_provider("SlurmProvider", provider_kwargs(spec), spec, dry_run)
    # without accounting the provider falls back to squeue, which by default lists only pending and
    # running jobs, so a cancelled or timed-out block would read as COMPLETED; -t all keeps the
    # scheduler's real final state for MinJobAge seconds
    parsl_api.squeue_all_states(p)
    return p


def query(job_ids: list[str]) -> dict[str, batch.Block] | None:
    """Each job's state, reason and walltime left, finished jobs included (``squeue -t all``); a
    job the controller has already forgotten is absent."""
    out = batch.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r|%L"],
                    empty_if="Invalid job id")
    if out is None:
        return None
    found = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            job, state, reason, left = parts
            found[job] = batch.Block("", job, state, "" if reason == "None" else reason,
                                     batch.seconds(left) if state == "RUNNING" else None)
    return found


def provider_config(spec: Spec) -> dict[str, Any]:
    """``engine.provider`` of a Globus Compute endpoint's config.yaml for this site."""
    return hpc.batch_provider_config("SlurmProvider", provider_kwargs(spec), spec)


def build(site: Any, run_dir: Path, dry_run: bool = False):
    return hpc.remote_htex(site, provider(site.executor, dry_run), site.executor, dry_run=dry_run)


def describe(site: Any) -> str:
    s: Spec = site.executor
    return hpc.describe_htex("Slurm", s, {"partition": s.partition, "account": s.account, "qos": s.qos,
                                      "constraint": s.constraint, "clusters": s.clusters})
