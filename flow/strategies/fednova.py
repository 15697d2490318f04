"""FedNova: FedAvg with each client's update normalised by its number of local steps.

Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020. When clients run different numbers of local steps (paced stragglers,
unequal shards), plain FedAvg over-weights the clients that stepped most and converges to a
different objective. FedNova averages per-step updates instead:
``G' = G - tau_eff * sum_i p_i (G - x_i) / tau_i`` with ``p_i`` the example weights and
``tau_eff = sum_i p_i tau_i``. With equal step counts it is exactly FedAvg.

Under ``round.aggregate: site`` a site's partial is its clients' mean weighted by ``n_i / tau_i``
together with the sums ``A = sum n_i / tau_i`` and ``T = sum n_i tau_i`` (``extras["nova"]``, from
the driver's records): every term of the rule is a sum over clients, so sums over sites give the
same step. A single client is the partial ``(n / tau, n tau, x)``.

Statistics buffers and counters (apps/kinds.py) are not stepped: the step's weights on the clients
sum to ``tau_eff * sum_i p_i / tau_i``, above 1 when step counts differ, which would extrapolate a
running variance past every client's. They take the mean weighted by ``n_i / tau_i`` instead, the
weights a site's partial already carries, so sites give the same statistics as the clients; with
equal step counts it is the example-weighted mean.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import (
    Params,
    Strategy,
    StrategyOptions,
    cast_like,
    weighted_sum,
)


class FedNovaOptions(StrategyOptions):
    name: Literal["fednova"] = "fednova"


class FedNova(Strategy):
    name = "fednova"
    Options = FedNovaOptions

    @classmethod
    def site_weights(cls) -> str | None:
        return "steps"

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        if not updates:
            raise ValueError("cannot aggregate zero updates")
        e = np.array([u.num_examples * u.scale for u in updates], dtype=np.float64)
        a_t = np.array([_terms(u, n) for u, n in zip(updates, e, strict=True)], dtype=np.float64)
        total = float(e.sum())
        tau_eff = float(a_t[:, 1].sum()) / total
        w = a_t[:, 0] / total  # p_i / tau_i per client; A_s / E per site partial
        a = float(w.sum())
        # G - tau_eff * sum_i (p_i / tau_i) (G - x_i) = G (1 - tau_eff * a) + tau_eff * sum_i (p_i / tau_i) x_i:
        # one streamed weighted sum per tensor
        out: Params = OrderedDict()
        for name, g in global_params.items():
            new = np.asarray(g, dtype=np.float64) * (1.0 - tau_eff * a)
            new += tau_eff * weighted_sum([u.params[name] for u in updates], w, exact=True)
            out[name] = cast_like(new, g)
        return out

    def statistics(self, global_params: Params, updates: list[ClientUpdate], out: Params,
                   names: list[str]) -> Params:
        """The ``n_i / tau_i``-weighted mean of the statistics (module docstring)."""
        e = np.array([u.num_examples * u.scale for u in updates], dtype=np.float64)
        a = np.array([_terms(u, n)[0] for u, n in zip(updates, e, strict=True)], dtype=np.float64)
        return OrderedDict((n, cast_like(weighted_sum([u.params[n] for u in updates], a / a.sum(), exact=True),
                                         global_params[n])) for n in names)


def _terms(u: ClientUpdate, weight: float) -> tuple[float, float]:
    """(sum n_i / tau_i, sum n_i tau_i) of one contribution: a site's, or one client's own."""
    if "nova" in u.extras:
        a, t = u.extras["nova"]
        return float(a) * u.scale, float(t) * u.scale
    tau = max(int(u.extras.get("steps", 1)), 1)
    return weight / tau, weight * tau
