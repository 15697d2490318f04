"""The contract every round mode keeps, what a mode is given, and the defaults most modes share.

A synchronous round's attempt (flow/rounds/synchronous.py `_attempt`) is the same five steps
whatever the mode: select, instruct, `submit`, gather (with the mode's `observe` and `accept`),
then the mode's end of it (`gathered`, and `confirm` once the quorum is met); the strategy later
aggregates the mode's `contributions`. What differs between aggregating every update at the
driver, folding them as they arrive, aggregating at the sites and secure aggregation lives
behind these methods, so the attempt never asks which mode it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.rounds import validate
from fedgrid.flow.rounds.fold import FoldDriver
from fedgrid.flow.rounds.gather import Gathered

if TYPE_CHECKING:
    from fedgrid.apps.records import Instructions, SiteRow
    from fedgrid.flow.rounds.tasks import Tasks

Params = dict[str, np.ndarray]
Instr = dict[int, "Instructions"]  # each client's extra train settings (strategy, pacing, secagg)
Futures = dict[int, tuple[str, Future]]  # {client: (site, future)}: what the gather waits on
OnResult = Callable[[int, bool], None]  # the gather's per-client callback (client, accepted)
Send = Callable[[list[int]], Futures]  # the round's train tasks for these clients (cohorts included)


class ModeDriver(FoldDriver, Protocol):
    """What the round modes read of the run's driver (flow/rounds/driver.py `Driver`), so a mode
    can be built on a stand-in in tests: what the fold reads, and the following."""

    @property
    def tasks(self) -> Tasks: ...

    @property
    def runtime(self) -> Any: ...  # flow/rounds/sites.py SiteRuntime: two-tier's aggregation apps

    def examples_limit(self, client: int) -> int: ...


@dataclass(frozen=True)
class Context:
    """One attempt of a round as its mode sees it: the driver, the round and attempt number, the
    global params the clients train from, what each site was sent, and each client's
    instructions (secure aggregation's setup adds its masking options to them before training)."""

    drv: ModeDriver
    rnd: int
    number: int
    params: Params
    sent: dict[str, Any]
    instr: Instr


@runtime_checkable
class RoundMode(Protocol):
    """How a round's updates become what the strategy aggregates.

    The attempt calls, in order: `submit`, then the gather with `observe(done)` as its per-client
    callback and `accept` as its check of each answer (on a thread of its own, bounded by the
    round's deadline, when `reads`), then `gathered(g)` before the clients' profiles learn from
    the outcome, then `confirm(g)` only if the quorum is met and `problem` is None. The round's
    aggregation later takes `contributions(g, reused)`, and its row `site_rows`."""

    reads: bool  # whether `accept` reads update data (the store): the gather bounds it by the deadline
    problem: str | None  # why this attempt fails although it may have met its quorum (a secagg stage)

    @property
    def site_rows(self) -> list[SiteRow] | None:
        """One row per site's partial (round.aggregate: site), None in modes without partials."""
        ...

    def submit(self, clients: list[int], send: Send) -> Futures:
        """Send the train tasks (through `send`) and do what the mode does around them."""
        ...

    def observe(self, done: OnResult) -> OnResult:
        """The gather's per-client callback, wrapped where the mode follows the clients as they settle."""
        ...

    def accept(self, client: int, site: str, answer: Any) -> ClientUpdate:
        """One answer checked as it arrives; raises (InvalidUpdate, ...) to make it a failure."""
        ...

    def gathered(self, g: Gathered) -> None:
        """The gather is over: the outcome as the quorum and the profiles are to see it."""
        ...

    def confirm(self, g: Gathered) -> None:
        """The quorum is met: the mode's last step that may still fail the attempt (sets `problem`)."""
        ...

    def contributions(self, g: Gathered, reused: list[ClientUpdate]) -> list[ClientUpdate]:
        """What the strategy aggregates, once late updates are carried into `g` and `reused`
        (round.absent: reuse) stand in for the clients that did not answer."""
        ...


class Mode(ABC):
    """The defaults of the contract: tasks sent as they are, every update kept and aggregated with
    its stand-ins, nothing to add after the gather. Modes override what they do differently."""

    reads = True

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.problem: str | None = None
        self.early: list[Failure] = []  # clients lost before training (secagg's stages 1-2)
        self._site_rows: list[SiteRow] | None = None

    @property
    def site_rows(self) -> list[SiteRow] | None:
        return self._site_rows

    def submit(self, clients: list[int], send: Send) -> Futures:
        return send(clients)

    def observe(self, done: OnResult) -> OnResult:
        return done

    @abstractmethod
    def accept(self, client: int, site: str, answer: Any) -> ClientUpdate:
        """Each mode checks an answer its own way (the contract's `accept`)."""

    def gathered(self, g: Gathered) -> None:
        g.failures[:0] = self.early

    def confirm(self, g: Gathered) -> None:
        return None

    def contributions(self, g: Gathered, reused: list[ClientUpdate]) -> list[ClientUpdate]:
        return g.updates + reused

    def budget(self, client: int) -> Callable[[int], int]:
        """The most local steps `client` may claim: the job's epochs, or its paced step budget."""
        tr = self.ctx.drv.job.train
        return validate.step_budget(tr.epochs, tr.batch_size, self.ctx.instr.get(client, {}).get("steps"))

    def checked(self, client: int, u: ClientUpdate) -> ClientUpdate:
        """`u` after the strategy's own check of the fields it reads (against what it sent `client`).
        (An envelope is taken as a ClientUpdate where the gather always took it so: an evaluation
        answered for training fails at the first field only an update has.)"""
        self.ctx.drv.strategy.check_answer(u, self.ctx.instr.get(client, {}))
        return u
