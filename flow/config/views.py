"""A typed view of the job's ``strategy`` block, whose type is built at run time.

The strategy block is a discriminated union put together when the schema is imported
(:mod:`.schema`: every strategy's ``Options``). This Protocol says what the driver reads of any
of them, and :func:`strategy_of` gives the block as that view. (A site's ``executor`` block needs
none: to a type checker it is ``SpecBase``, which every kind's ``Spec`` subclasses.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fedgrid.flow.config.schema import Job


class StrategyBlock(Protocol):
    """The job's ``strategy`` block: the strategy's ``Options`` (flow/strategies/base.py ``StrategyOptions``)."""

    @property
    def name(self) -> str: ...  # the discriminator, a Literal on each Options

    def model_dump(self, *, exclude: set[str] | None = None) -> dict[str, Any]: ...


def strategy_of(job: Job) -> StrategyBlock:
    return job.strategy
