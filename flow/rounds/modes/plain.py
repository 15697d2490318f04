"""The plain mode: every client's update fetched, checked and kept whole for the strategy.

The mode of the strategies that need every update (median, trimmed mean, Krum, FedNova,
SCAFFOLD), of DP (each update is clipped or re-weighted first) and of ``round.absent: reuse`` (the
client memory keeps the updates): whatever flow/rounds/fold.py `applies` leaves out.
"""

from __future__ import annotations

from typing import Any

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.rounds import validate
from fedgrid.flow.rounds.modes.base import Mode


class Plain(Mode):
    """`validate.accept` on each answer (envelope against what was sent, fetch, decode, check),
    then the strategy's own check; the round aggregates the updates and their stand-ins."""

    def accept(self, client: int, site: str, answer: Any) -> ClientUpdate:
        c = self.ctx
        rs = c.drv.job.round
        return self.checked(client, validate.accept(answer, client, site, c.rnd, c.params, c.drv.tasks.area,
                                                    rs.max_update_norm, self.budget(client),
                                                    c.drv.examples_limit(client)))
