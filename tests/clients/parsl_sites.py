"""Factories for `parsl` sites (``executor: {kind: parsl, factory: parsl_sites:<name>}``), written
as a user would write them, plus the wrong ones whose mistakes `fedgrid check` must name."""

from __future__ import annotations

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

NOT_A_FUNCTION = 42


def htex(site: str) -> HighThroughputExecutor:
    """One pool on this machine, started at once; a short heartbeat so a lost pool is noticed."""
    return HighThroughputExecutor(label=f"{site}-pool", address="127.0.0.1", max_workers_per_node=1,
                                  heartbeat_period=2, heartbeat_threshold=10,
                                  provider=LocalProvider(init_blocks=1, max_blocks=1))


def threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_threads=3)


def on_demand(workers: int = 2) -> HighThroughputExecutor:
    """A local pool whose block starts only when tasks wait (init_blocks 0)."""
    return HighThroughputExecutor(address="127.0.0.1", max_workers_per_node=workers,
                                  provider=LocalProvider(init_blocks=0, max_blocks=1))


def slurm(site: str) -> HighThroughputExecutor:
    return HighThroughputExecutor(address="127.0.0.1", max_workers_per_node=4, provider=SlurmProvider(
        partition="gpu", nodes_per_block=2, init_blocks=0, max_blocks=3, walltime="00:30:00",
        worker_init="source ~/venv/bin/activate", launcher=SrunLauncher()))


def pbs() -> HighThroughputExecutor:
    """No address: in check mode the interchange address is looked for on this machine only."""
    return HighThroughputExecutor(provider=PBSProProvider(queue="debug"))


def raises(site: str) -> HighThroughputExecutor:
    raise RuntimeError(f"no allocation for {site}")


def config() -> Config:
    return Config(executors=[threads()])


def nothing() -> None:
    """Forgets to return the executor."""


def two_args(site: str, partition: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor()


SHARED = ThreadPoolExecutor(label="shared")


def shared() -> ThreadPoolExecutor:
    """Returns the one module-level executor every time."""
    return SHARED
