"""Typed views of the two job blocks whose type is built at run time.

A site's ``executor`` and the job's ``strategy`` are discriminated unions put together when the schema
is imported (:mod:`.schema`: every kind module's ``Spec``, every strategy's ``Options``), which a type
checker cannot see. These Protocols say what the driver reads of any of them, whichever kind or
strategy, and :func:`executor_of` / :func:`strategy_of` give a block as that view. Kind-specific
options are read after an ``isinstance`` check against the kind's own ``Spec``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from fedgrid.executors.common import SpecBase

if TYPE_CHECKING:
    from fedgrid.flow.config.schema import Job, SiteSpec


# A site's ``executor`` block is the kind's ``Spec``: every one subclasses ``SpecBase``, which
# declares what the driver reads of any kind.
ExecutorBlock = SpecBase


class StrategyBlock(Protocol):
    """The job's ``strategy`` block: the strategy's ``Options`` (flow/strategies/base.py ``StrategyOptions``)."""

    @property
    def name(self) -> str: ...  # the discriminator, a Literal on each Options

    def model_dump(self, *, exclude: set[str] | None = None) -> dict[str, Any]: ...


def executor_of(site: SiteSpec) -> ExecutorBlock:
    return site.executor


def strategy_of(job: Job) -> StrategyBlock:
    return job.strategy
