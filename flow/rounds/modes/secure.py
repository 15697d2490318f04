"""The secure-aggregation mode: masked updates, of which the driver only ever unmasks the sum.

Its stages (flow/privacy/secagg.py): keys and shares before anyone trains (`setup`, a step of
`submit`; shared with two-tier rounds, whose masking groups are the sites), each masked update's
envelope and shape checked as it arrives, and the sum unmasked once the quorum is met. A stage
that fails fails the attempt like a missed quorum (`problem`).
"""

from __future__ import annotations

from typing import Any, cast

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.privacy.secagg import SecAggFailed, SecureAggregation
from fedgrid.flow.rounds import validate
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.rounds.modes.base import Context, Futures, Mode, Send


def setup(ctx: Context, clients: list[int], by_site: bool) -> tuple[list[int], list[Failure], str | None]:
    """Stages 1-2 (keys and shares) before anyone trains: the clients that take part in the
    masking (their instructions now carry their masking options), the ones that failed a stage,
    and the problem if the round cannot."""
    assert ctx.drv.secagg is not None
    try:
        masking, early, opts = ctx.drv.secagg.setup(ctx.rnd, clients, ctx.params, by_site=by_site)
    except SecAggFailed as e:
        return [], [], str(e)
    for c, o in opts.items():
        ctx.instr.setdefault(c, {})["secagg"] = o
    return masking, early, None


class Secure(Mode):
    """Flat secure aggregation: the round aggregates one contribution, the unmasked mean."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        assert ctx.drv.secagg is not None
        self.secagg: SecureAggregation = ctx.drv.secagg
        self.secure: ClientUpdate | None = None

    def submit(self, clients: list[int], send: Send) -> Futures:
        masking, self.early, self.problem = setup(self.ctx, clients, by_site=False)
        return send(masking)

    def accept(self, client: int, site: str, answer: Any) -> ClientUpdate:
        """The envelope against what was sent, the masked vector fetched: its shape, nothing else
        (the driver cannot read a masked update, so per-update checks cannot run)."""
        c = self.ctx
        u = cast(ClientUpdate, validate.envelope(answer, client, site, c.rnd, c.drv.tasks.area))  # (see Mode.checked)
        return self.secagg.check(c.rnd, u.resolve())

    def confirm(self, g: Gathered) -> None:
        """Stage 4: unmask the sum; clients lost in it are `g.failures`, too few fails the attempt."""
        try:
            self.secure = self.secagg.finish(self.ctx.rnd, g.updates, self.ctx.params, g.failures)
        except SecAggFailed as e:
            self.problem = str(e)

    def contributions(self, g: Gathered, reused: list[ClientUpdate]) -> list[ClientUpdate]:
        return [self.secure] if self.secure is not None else super().contributions(g, reused)
