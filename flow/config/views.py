"""Typed views of the two job blocks whose type is built at run time.

A site's ``executor`` and the job's ``strategy`` are discriminated unions put together when the schema
is imported (:mod:`.schema`: every kind module's ``Spec``, every strategy's ``Options``), which a type
checker cannot see. These Protocols say what the driver reads of any of them, whichever kind or
strategy, and :func:`executor_of` / :func:`strategy_of` give a block as that view. Kind-specific
options are read after an ``isinstance`` check against the kind's own ``Spec``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fedgrid.executors.batch import Scheduler
    from fedgrid.flow.config.schema import Job, SiteSpec


class ExecutorBlock(Protocol):
    """A site's ``executor`` block: the kind's ``Spec`` (executors/common.py ``SpecBase``)."""

    @property
    def kind(self) -> str: ...  # the discriminator, a Literal on each Spec

    @property
    def scales(self) -> bool: ...

    @property
    def in_driver(self) -> bool: ...

    @property
    def watch_workers(self) -> bool: ...

    @property
    def payload_limit(self) -> int | None: ...

    @property
    def payload_overhead(self) -> float: ...

    def runs_here(self) -> bool: ...

    def scheduler(self) -> Scheduler | None: ...

    def resolve(self, site: str) -> None: ...


class StrategyBlock(Protocol):
    """The job's ``strategy`` block: the strategy's ``Options`` (flow/strategies/base.py ``StrategyOptions``)."""

    @property
    def name(self) -> str: ...  # the discriminator, a Literal on each Options

    def model_dump(self, *, exclude: set[str] | None = None) -> dict[str, Any]: ...


def executor_of(site: SiteSpec) -> ExecutorBlock:
    return site.executor


def strategy_of(job: Job) -> StrategyBlock:
    return job.strategy
