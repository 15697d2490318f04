"""The folding mode: a mean-based round's updates folded into one running sum as they arrive.

The fold itself (spills, client order, the sum) is flow/rounds/fold.py; this is how a round uses
it: one `fold.Fold` per attempt, fed by the gather's accept and its per-client callback, finished
once late updates are carried in. Chosen where `fold.applies` says so.
"""

from __future__ import annotations

from typing import Any

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.rounds import fold
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.rounds.modes.base import Futures, OnResult, Send
from fedgrid.flow.rounds.modes.plain import Plain


class Folding(Plain):
    """Plain's checks, with the params read into the fold instead of kept (`fold.Fold.accept`);
    the round aggregates one contribution, the folded weighted mean."""

    folding: fold.Fold  # this attempt's fold (from `submit` on)

    def submit(self, clients: list[int], send: Send) -> Futures:
        futs = send(clients)
        self.folding = fold.Fold(self.ctx.params, self.ctx.rnd, list(futs))  # every sent client, in its order
        return futs

    def observe(self, done: OnResult) -> OnResult:
        """A settled client may let the next ones be folded (the fold goes in client order)."""
        return self.folding.observe(done)

    def accept(self, client: int, site: str, answer: Any) -> ClientUpdate:
        c = self.ctx
        rs = c.drv.job.round
        return self.checked(client, self.folding.accept(answer, client, site, c.rnd, c.params, c.drv.tasks.area,
                                                     rs.max_update_norm, self.budget(client),
                                                     c.drv.examples_limit(client)))

    def contributions(self, g: Gathered, reused: list[ClientUpdate]) -> list[ClientUpdate]:
        """The folded mean (late updates carried into `g.updates` are folded now; a folded round
        has no stand-ins: `fold.applies` excludes round.absent: reuse)."""
        return [self.folding.finish(g.updates)]
