"""What the remote-HTEX kinds (slurm, pbs, kubernetes, aws) share: options, the executor, launchers.

Workers run on machines this process does not own, so unlike `htex` the worker pool is started by
name (``process_worker_pool.py`` from the remote PATH, which ``worker_init`` sets up by activating
an environment where fedgrid is installed). Heartbeats default to 5 s with a 20 s threshold (Parsl's
30 and 120 notice a lost node after two minutes); raise them for a busy login node.

``dry_run`` (``fedgrid check``) must not touch the network or the scheduler, but two Parsl
constructors do: HTEX with ``address=None`` probes the machine's addresses, including an HTTP
query to api.ipify.org (up to 30 s offline), and SlurmProvider runs ``sacct -X`` to pick its status
command. :func:`remote_htex` and :func:`construct` replace exactly those steps in a dry run.

GPUs: ``gpus_per_node`` is what each node gets (asked of Slurm, PBS and Kubernetes) and the
devices 0..n-1 its workers are pinned to, one worker per pin unless ``workers_per_node`` says
otherwise (it must then agree); ``workers_per_gpu`` / ``gpus_per_worker`` share them out
(:mod:`fedgrid.executors.gpus`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Literal
from unittest import mock

from pydantic import Field, model_validator

from fedgrid.executors import gpus, parsl_api
from fedgrid.executors.certs import Delivery, attach, pool_launch_cmd
from fedgrid.executors.common import SpecBase, SpecError
from fedgrid.executors.htex import interchange_cmd

LauncherName = Literal["srun", "mpiexec", "mpirun", "aprun", "simple", "single"]
LAUNCHERS = {"srun": "SrunLauncher", "mpiexec": "MpiExecLauncher", "mpirun": "MpiRunLauncher",
             "aprun": "AprunLauncher", "simple": "SimpleLauncher", "single": "SingleNodeLauncher"}
TAKES_OVERRIDES = frozenset({"srun", "mpiexec", "mpirun", "aprun"})  # launchers with an ``overrides`` argument
Walltime = Annotated[str, Field(pattern=r"^\d{1,3}:[0-5]\d:[0-5]\d$", description="HH:MM:SS")]
NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]


class RemoteHtexSpec(SpecBase, gpus.GpuSharing):
    """Options of every HTEX site whose workers run on provisioned nodes (batch jobs, pods, VMs)."""

    scales: ClassVar[bool] = True  # blocks come from the scheduler or the cloud on demand
    GPUS_KEY: ClassVar[str] = "gpus_per_node"

    workers_per_node: PosInt | None = None
    """Workers on each node. Unset: one per GPU pin with `gpus_per_node`, else the node's cores /
    `cores_per_worker` when known, else 1."""
    cores_per_worker: Annotated[float, Field(gt=0)] = 1.0
    """Cores each worker counts on (Parsl's pool starts no more workers than cores allow)."""
    gpus_per_node: NonNegInt = 0
    """GPUs each node gets from its scheduler or cloud (`--gpus-per-node`, `ngpus=`, the pod's
    `gpu_resource`); its workers are pinned to devices 0..n-1 (`CUDA_VISIBLE_DEVICES`)."""
    address: str | None = None
    """Where the workers reach the driver's interchange (unset: Parsl's discovery)."""
    worker_init: str = ""
    """Shell lines run before the worker pool starts: module loads, venv activation."""
    worker_logdir_root: str | None = None
    """Where pools write their logs on the nodes (unset: Parsl's choice)."""
    init_blocks: NonNegInt = 0
    """Blocks requested at start."""
    min_blocks: NonNegInt = 0
    """Blocks kept when idle."""
    max_blocks: PosInt = 1
    """Most blocks at once."""
    nodes_per_block: PosInt = 1
    """Nodes in each block."""
    heartbeat_period: PosInt = 5
    """Seconds between a pool's heartbeats."""
    heartbeat_threshold: PosInt = 20
    """A pool that sends no heartbeat for this many seconds is lost and its tasks fail (Parsl's
    defaults, 30 and 120, notice a lost node after two minutes)."""

    @model_validator(mode="after")
    def _blocks_ordered(self):
        if self.min_blocks > self.max_blocks or self.init_blocks > self.max_blocks:
            raise ValueError(f"need min_blocks ({self.min_blocks}) and init_blocks ({self.init_blocks}) "
                             f"<= max_blocks ({self.max_blocks})")
        if self.heartbeat_threshold <= self.heartbeat_period:
            raise ValueError(f"heartbeat_threshold ({self.heartbeat_threshold}) must exceed heartbeat_period "
                             f"({self.heartbeat_period})")
        return self

    def node_cores(self) -> int | None:
        """Cores per node when the kind knows them (slurm cores_per_node, pbs cpus_per_node)."""
        return None

    def pool_cores(self) -> int | None:
        """Cores a worker pool counts on its node when the kind sets them (PARSL_CORES, which
        SlurmProvider exports from cores_per_node); None: the node's own count, unknown here."""
        return None

    def gpu_ids(self) -> list[str]:
        return [str(i) for i in range(self.gpus_per_node)]

    def node_workers(self) -> int | None:
        return self.workers()

    def nodes(self) -> int:
        return self.nodes_per_block * self.max_blocks

    def workers(self) -> int:
        if self.workers_per_node is not None:
            return self.workers_per_node
        if pins := self.pins():
            return len(pins)
        cores = self.node_cores()
        return max(1, int(cores // self.cores_per_worker)) if cores else 1

    def gpu_pins(self) -> list[str]:
        """Each worker's GPU(s) on a node, checked against ``workers_per_node`` (a SpecError names
        the option): Parsl would start only as many workers as pins, and leave GPUs idle for fewer."""
        pins = self.pins()
        if pins and self.workers_per_node not in (None, len(pins)):
            raise SpecError("workers_per_node", f"{self.workers_per_node} worker(s) for {len(pins)} GPU pin(s) "
                            f"({gpus.placement(pins)}); leave workers_per_node out for one worker per pin, or share "
                            "GPUs with workers_per_gpu")
        cores = self.pool_cores()
        if pins and cores and (fit := math.floor(cores / self.cores_per_worker)) < len(pins):  # Parsl's pool cap
            raise SpecError("cores_per_worker", f"{cores} core(s)/node at {self.cores_per_worker:g} per worker start "
                            f"{fit} of the {len(pins)} GPU workers; set cores_per_worker: "
                            f"{cores / (len(pins) + 0.5):.3g}")
        return pins

    def resolve(self, site: str) -> None:
        self.gpu_pins()


class BatchHtexSpec(RemoteHtexSpec):
    """A batch scheduler's extras: walltime, its own directives, and how a job starts its pools."""

    walltime: Walltime = Field("01:00:00", description=(
        "Each block's time limit, `HH:MM:SS`. A block with less time left than a round plus two polls takes no "
        "new tasks, and the next block is requested at once."))
    status_poll_s: Annotated[float, Field(ge=1)] = 5.0
    """How often the driver and Parsl ask the scheduler about the blocks (`squeue`, `qstat`): how soon
    a lost, queued or expiring block is acted on; every poll is one scheduler command."""
    scheduler_options: str = ""
    """Extra scheduler directive lines (`#SBATCH ...`, `#PBS ...`) for the job script."""
    launcher: LauncherName = "single"
    """How a batch job starts its worker pools on its nodes (a Parsl launcher)."""
    launcher_options: str = ""
    """Extra arguments for `srun`, `mpiexec`, `mpirun` or `aprun` (Parsl's `overrides`)."""

    @model_validator(mode="after")
    def _options_need_overrides(self):
        if self.launcher_options and self.launcher not in TAKES_OVERRIDES:
            raise ValueError(f"launcher_options needs one of {sorted(TAKES_OVERRIDES)}, not {self.launcher!r}")
        return self


def make_launcher(name: str, options: str = ""):
    """The Parsl launcher for a YAML launcher name (``srun``, ``mpiexec``, ..., ``single``)."""
    import parsl.launchers

    cls = getattr(parsl.launchers, LAUNCHERS[name])
    return cls(overrides=options) if name in TAKES_OVERRIDES else cls()


def block_kwargs(spec: RemoteHtexSpec) -> dict[str, Any]:
    """Provider arguments every remote kind takes the same way."""
    return {"nodes_per_block": spec.nodes_per_block, "init_blocks": spec.init_blocks,
            "min_blocks": spec.min_blocks, "max_blocks": spec.max_blocks, "worker_init": spec.worker_init}


def provider_config(provider_cls_name: str, kwargs: dict[str, Any], launcher_name: str | None = None,
                    launcher_options: str = "") -> dict[str, Any]:
    """A provider as a Globus Compute endpoint's config.yaml wants it under ``engine.provider``."""
    cfg: dict[str, Any] = {"type": provider_cls_name, **kwargs}  # the same arguments build() passes
    if launcher_name:
        cfg["launcher"] = {"type": LAUNCHERS[launcher_name]}
        if launcher_options:
            cfg["launcher"]["overrides"] = launcher_options
    return cfg


@contextmanager
def _no_commands(provider_cls: type) -> Iterator[None]:
    """Scheduler commands a constructor runs (SlurmProvider's ``sacct -X``) fail without running."""
    def refuse(self, cmd: str, timeout: int | None = None) -> tuple[int, str, str]:
        return 1, "", f"fedgrid dry run: {cmd!r} not executed"

    with mock.patch.object(provider_cls, "execute_wait", refuse):
        yield


def construct(provider_cls: type, kwargs: dict[str, Any], dry_run: bool):
    """``provider_cls(**kwargs)``; in a dry run, scheduler commands in the constructor are not run."""
    if not dry_run or not hasattr(provider_cls, "execute_wait"):
        return provider_cls(**kwargs)
    with _no_commands(provider_cls):
        return provider_cls(**kwargs)


def _interface_addresses() -> set[str]:
    """Parsl's address discovery without its hostname lookup, route probe and api.ipify.org query."""
    import psutil
    from parsl.addresses import address_by_interface

    found = set()
    for name in psutil.net_if_addrs():
        try:
            found.add(address_by_interface(name))
        except Exception:  # no IPv4 on this interface; Parsl skips these the same way
            continue
    return found


def remote_htex(site: Any, provider: Any, spec: RemoteHtexSpec, *, dry_run: bool = False,
                certs: Delivery | None = None):
    """The HTEX for a remote site; in a dry run, ``address=None`` discovers only local interfaces.
    ``certs``: how pools that do not share this machine's filesystem get the certificates
    (pods, instances; see fedgrid.executors.certs); None where they read the driver's folder."""
    from parsl.executors import HighThroughputExecutor
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    pins = spec.gpu_pins()
    kwargs = dict(label=site.name, provider=provider, address=spec.address,
                  max_workers_per_node=spec.workers(), cores_per_worker=spec.cores_per_worker,
                  available_accelerators=pins, heartbeat_period=spec.heartbeat_period,
                  heartbeat_threshold=spec.heartbeat_threshold, worker_logdir_root=spec.worker_logdir_root,
                  block_error_handler=_three_failed_blocks, interchange_launch_cmd=interchange_cmd(),
                  encrypted=True)  # CurveZMQ between interchange and pools: pinned, not left to a default
    if certs is not None:
        kwargs["launch_cmd"] = pool_launch_cmd()
        # a pod or an instance has no copy of the driver's run directory, where Parsl's default
        # would put the pools' logs: a non-root pool could not create that path there
        kwargs["worker_logdir_root"] = spec.worker_logdir_root or "/tmp/fedgrid-workers"
    if pins:
        kwargs["launch_cmd"] = gpus.export(pins) + str(kwargs.get("launch_cmd", DEFAULT_LAUNCH_CMD))
    if dry_run and spec.address is None:
        with parsl_api.dry_run_discovery(_interface_addresses):
            ex = HighThroughputExecutor(**kwargs)
    else:
        ex = HighThroughputExecutor(**kwargs)
    return ex if certs is None else attach(ex, certs)


def _three_failed_blocks(executor: Any, status: dict) -> None:
    """Give a site up (Parsl's bad state: its tasks fail at once) only after its last three blocks
    all failed. Parsl's default gives up on the first failed block when init_blocks is 1, so one
    lost node would end the site for the rest of the run; fedgrid replaces lost blocks instead."""
    from parsl.jobs.error_handlers import windowed_error_handler

    windowed_error_handler(executor, status, threshold=3)


def describe_htex(where: str, spec: RemoteHtexSpec, settings: dict[str, Any], node: str = "node") -> str:
    """``Parsl HTEX on <where>: k=v ..., N node(s)/block, blocks a..b, ...`` for `fedgrid check`."""
    parts = [" ".join(f"{k}={v}" for k, v in settings.items() if v not in (None, "", False))]
    parts.append(f"{spec.nodes_per_block} {node}(s)/block, blocks {spec.min_blocks}..{spec.max_blocks}"
                 f" (init {spec.init_blocks})")
    if isinstance(spec, BatchHtexSpec):
        parts += [f"walltime {spec.walltime}", spec.launcher]
    pins = spec.pins()
    gpu = f", {spec.gpus_per_node} GPU(s)/{node} ({gpus.placement(pins)})" if pins else ""
    parts.append(f"{spec.workers()} worker(s)/{node}{gpu}")
    if spec.address:
        parts.append(f"interchange at {spec.address}")
    return f"Parsl HTEX on {where}: " + ", ".join(p for p in parts if p)


def batch_provider(provider_cls_name: str, kwargs: dict[str, Any], spec: BatchHtexSpec, dry_run: bool):
    """A batch-scheduler provider (``parsl.providers.<name>``) with the spec's launcher."""
    import parsl.providers

    from fedgrid.executors.batch import watched

    cls = watched(getattr(parsl.providers, provider_cls_name), spec.status_poll_s)
    return construct(cls, {**kwargs, "launcher": make_launcher(spec.launcher, spec.launcher_options)}, dry_run)


class _Placeholders(dict):
    """The executor's own setting for a launch-command field where it has one, else ``<field>``."""

    def __init__(self, executor: Any, **known: Any):
        super().__init__(known)
        self.executor = executor

    def __missing__(self, key: str) -> str:
        v = getattr(self.executor, key, None)
        return f"<{key}>" if v is None or callable(v) else str(v)


def batch_script(executor: Any, workers: int) -> str:
    """The job script a block of this (dry-run built) executor would be submitted with, exactly as
    the provider writes it, with the parts only known at start (ports, run directory) shown as
    ``<name>``. Nothing is submitted: the provider's command runner is replaced for the call."""
    import tempfile
    from pathlib import Path

    prov = executor.provider
    command = executor.launch_cmd.format_map(_Placeholders(
        executor, block_id="0", debug="", accelerators=" ".join(executor.available_accelerators),
        address_probe_timeout_string="", enable_mpi_mode="",
        max_workers_per_node=f"--max_workers_per_node={workers}", addresses=executor.address or "<addresses>"))
    with tempfile.TemporaryDirectory() as d, mock.patch.object(
            type(prov), "execute_wait", lambda self, cmd, timeout=None: (0, "Submitted batch job 0\n0.server", "")):
        prov.script_dir = d
        # one pool per node, which starts the workers: Parsl's HTEX submits every block with 1 task per node
        prov.submit(command, 1, job_name=f"parsl.{executor.label}.block-0")
        scripts = [p for p in Path(d).iterdir() if not p.name.endswith((".stdout", ".stderr", ".out", ".err"))]
        return scripts[0].read_text() if scripts else ""


def batch_provider_config(provider_cls_name: str, kwargs: dict[str, Any], spec: BatchHtexSpec) -> dict[str, Any]:
    """``engine.provider`` of a Globus Compute endpoint's config.yaml for a batch-scheduler site."""
    return provider_config(provider_cls_name, kwargs, spec.launcher, spec.launcher_options)
