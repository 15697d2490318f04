"""The two-tier mode (``round.aggregate: site``): each site aggregates its own clients' updates.

The site aggregators and the check of their partials are flow/rounds/twotier.py; this is how a
round uses them: the aggregators submitted beside the train tasks, each answer's envelope checked
at the driver (the params stay at the site: nothing is read) and counted for its site, and the
sites' partials turned into contributions once the gather is over. With secure aggregation the
masking groups are the sites, and the partials are unmasked per site.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.privacy.secagg import SecAggFailed
from fedgrid.flow.rounds import twotier, validate
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.rounds.modes import secure
from fedgrid.flow.rounds.modes.base import Context, Futures, Mode, OnResult, Send

if TYPE_CHECKING:
    from fedgrid.apps.records import SiteRow


class TwoTier(Mode):
    """The round aggregates one contribution per site (or what the strategy gets when every
    site's partial was lost: the updates left, none)."""

    reads = False  # only envelopes reach the driver: the gather need not read them on a thread of its own
    sr: twotier.SiteRound  # the round's site aggregators (from `submit` on)
    started: float  # when the train tasks went out: the sites' deadline counts from it

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.sites: list[ClientUpdate] | None = None

    def submit(self, clients: list[int], send: Send) -> Futures:
        """Secure aggregation's setup per site first (if any), then the train tasks and one
        aggregation app per site, started once its clients are checked."""
        masking = clients
        if self.ctx.drv.secagg is not None:
            masking, self.early, self.problem = secure.setup(self.ctx, clients, by_site=True)
        self.started = time.time()
        futs = send(masking)
        self.sr = twotier.submit(self.ctx.drv, self.ctx.rnd, self.ctx.number, futs, self.ctx.sent, self.started)
        return futs

    def observe(self, done: OnResult) -> OnResult:
        """A site's aggregator starts when the last of its clients has settled."""
        return self.sr.observe(done)

    def accept(self, client: int, site: str, answer: Any) -> ClientUpdate:
        """The envelope against what was sent (a reference must be in the site's store), the
        strategy's check, then the answer counted for its site's aggregator, which weighs by it."""
        c = self.ctx
        u = self.checked(client, cast(ClientUpdate, validate.envelope(
            answer, client, site, c.rnd, c.drv.tasks.site_store[site], self.budget(client),
            c.drv.examples_limit(client))))
        self.sr.accepted(u)
        return u

    def gathered(self, g: Gathered) -> None:
        """The sites' partials: clients their site's partial does not hold fail here."""
        super().gathered(g)
        self.sr.close()  # whatever was accepted is all there will be
        self.sites, self._site_rows = self._combine(g, self.started + self.ctx.drv.job.round.deadline_s)

    def _combine(self, g: Gathered, until: float) -> tuple[list[ClientUpdate] | None, list[SiteRow]]:
        """The sites' contributions and rows; under secure aggregation a site lost in the unmasking
        costs its clients, and a round left without a contribution fails like a missed quorum."""
        c = self.ctx
        try:
            return twotier.combine(c.drv, c.rnd, c.params, g, self.sr, until)
        except SecAggFailed as e:
            g.failures.append(Failure.of(-1, "driver", str(e)))
            g.failures.extend(Failure.of(u.client, u.site, f"secagg: {e}") for u in g.updates)
            g.updates.clear()
            return None, []

    def contributions(self, g: Gathered, reused: list[ClientUpdate]) -> list[ClientUpdate]:
        return self.sites if self.sites is not None else super().contributions(g, reused)
