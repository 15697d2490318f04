"""Round modes: how a synchronous round's updates become what the strategy aggregates.

One contract (`RoundMode`, modes/base.py) and one mode per way of aggregating: `Plain` (every
update kept), `Folding` (folded into a running sum as they arrive), `TwoTier` (each site
aggregates its clients; with or without secure aggregation) and `Secure` (masked updates, the sum
unmasked). `choose` is the one place that decides which mode a run's rounds use.
"""

from __future__ import annotations

from fedgrid.flow.rounds import fold
from fedgrid.flow.rounds.modes.base import Context, Futures, Mode, ModeDriver, OnResult, RoundMode, Send
from fedgrid.flow.rounds.modes.folding import Folding
from fedgrid.flow.rounds.modes.plain import Plain
from fedgrid.flow.rounds.modes.secure import Secure
from fedgrid.flow.rounds.modes.twotier import TwoTier

__all__ = ["Context", "Folding", "Futures", "Mode", "ModeDriver", "OnResult", "Plain", "RoundMode", "Secure", "Send",
           "TwoTier", "choose", "kind"]


def kind(drv: ModeDriver) -> type[Mode]:
    """The mode of this run's rounds: two-tier wherever sites aggregate (secure aggregation then
    runs per site inside it), else the fold where it applies (never with secure aggregation or
    DP), else secure aggregation, else every update kept."""
    if drv.tasks.site_store:
        return TwoTier
    if fold.applies(drv):
        return Folding
    return Secure if drv.secagg is not None else Plain


def choose(ctx: Context) -> RoundMode:
    """A fresh mode for one attempt of a round (a retried attempt starts from nothing)."""
    return kind(ctx.drv)(ctx)
