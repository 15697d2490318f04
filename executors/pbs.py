"""`pbs`: Parsl HTEX whose worker pools run in PBS Pro batch jobs (PBSProProvider).

Blocks are submitted with ``qsub`` as ``#PBS -l select=<nodes>:ncpus=<cpus_per_node><select_options>``;
``gpus_per_node`` adds ``:ngpus=N`` there (unless select_options already asks for ngpus) and pins
each worker to one GPU (or shares them out: ``workers_per_gpu``, ``gpus_per_worker``). Pools start
with ``mpiexec`` by default, one per node. The constructor runs no command, so a dry run builds
exactly what a real run would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from fedgrid.executors import batch, hpc

SCHEDULER = "PBS"
COMMAND = "qstat"
# PBS Pro's Exit_status of a finished job: killed for its walltime, deleted by qdel (SIGTERM + 256)
_EXIT = {-29: "TIMEOUT", 271: "CANCELLED", 0: "COMPLETED"}
_STATES = {"Q": "PENDING", "H": "HELD", "W": "PENDING", "T": "PENDING", "S": "SUSPENDED", "R": "RUNNING",
           "E": "RUNNING", "B": "RUNNING"}


class Spec(hpc.BatchHtexSpec):
    kind: Literal["pbs"] = "pbs"
    """Worker pools in PBS Pro batch jobs (Parsl's HTEX with a PBSProProvider)."""
    queue: str | None = None
    """The PBS queue (`#PBS -q`)."""
    account: str | None = None
    """The project to charge (`#PBS -A`)."""
    cpus_per_node: hpc.PosInt = 1
    """`ncpus` in the select statement; the default `workers_per_node` derives from it."""
    select_options: str = ""
    """Appended to the select statement, e.g. `mem=64gb:system=polaris` (`ngpus` is added from
    `gpus_per_node`)."""
    launcher: hpc.LauncherName = "mpiexec"
    """How a batch job starts its worker pools on its nodes (a Parsl launcher)."""

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


def query(job_ids: list[str]) -> dict[str, batch.Block] | None:
    """Each job's state, comment and walltime left from ``qstat -x -f -F json`` (finished jobs
    included); PBS's short ids (``123``) are matched to the full ones (``123.server``)."""
    out = batch.run(["qstat", "-x", "-f", "-F", "json", *job_ids], empty_if="Unknown Job Id")
    if out is None:
        return None
    try:
        jobs = json.loads(out or "{}").get("Jobs", {})
    except ValueError:
        return None
    found = {}
    for jid, j in jobs.items():
        full = next((x for x in job_ids if x.startswith(jid) or jid.startswith(x)), jid)
        found[full] = _block(full, j)
    return found


def _block(job: str, j: dict[str, Any]) -> batch.Block:
    code = j.get("job_state", "")
    if code == "F":  # finished: its exit status says how (a job without one failed)
        status = j.get("Exit_status")
        state = "FAILED" if status is None else _EXIT.get(status, "FAILED")
    else:
        state = _STATES.get(code, "UNKNOWN")
    left = None
    if state == "RUNNING":
        limit = batch.seconds((j.get("Resource_List") or {}).get("walltime", ""))
        used = batch.seconds((j.get("resources_used") or {}).get("walltime", "0:00:00")) or 0.0
        left = None if limit is None else max(0.0, limit - used)
    return batch.Block("", job, state, str(j.get("comment", ""))[:120], left)


def provider_config(spec: Spec) -> dict[str, Any]:
    """``engine.provider`` of a Globus Compute endpoint's config.yaml for this site."""
    return hpc.batch_provider_config("PBSProProvider", provider_kwargs(spec), spec)


def build(site: Any, run_dir: Path, dry_run: bool = False):
    return hpc.remote_htex(site, provider(site.executor, dry_run), site.executor, dry_run=dry_run)


def describe(site: Any) -> str:
    s: Spec = site.executor
    return hpc.describe_htex("PBS Pro", s, {"queue": s.queue, "account": s.account, "cpus_per_node": s.cpus_per_node,
                                        "select": s.select()})
