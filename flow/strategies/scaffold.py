"""SCAFFOLD: stochastic controlled averaging; control variates cancel client drift.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020.
The server keeps a control variate ``c`` and every client ``i`` its own ``c_i``, estimates of
the global and the local gradient direction. Each local step uses ``grad + c - c_i``, so a client
follows the global direction rather than its own data's; afterwards it updates
``c_i+ = c_i - c + (G - y_i) / (K * lr)`` (option II). The server steps
``G' = G + server_lr * mean(y_i - G)`` and ``c' = c + |S| / N * mean(c_i+ - c_i)``.

Where the state lives: ``c`` is the strategy state (checkpointed with the round). Each ``c_i``
stays at its client's site, in the client's state (apps/sitestate.py: one versioned object per
client in the site's store, the driver recording only its digest, and only for an update it
aggregates), so a resume and whichever worker runs the client correct with exactly the variate
that client's last aggregated update left; an abandoned or rejected attempt's variate is never
used. Option II assumes plain SGD at the clients, and a job with ``train.momentum`` is
refused (``check_job``): with variates divided by momentum's longer path, the quickstart's
momentum 0.9 still ran away after round 6. apps/corrections.py keeps that momentum-aware divisor;
at momentum 0 it is ``K * lr``.

Under ``round.aggregate: site`` a client's ``c_i+ - c_i`` stays at its site with its update; the
site's partial carries its clients' mean delta and which clients it holds: the server's ``c`` moves
by the same mean as over the clients.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from fedgrid.apps.records import Instructions
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, server_step


class ScaffoldOptions(StrategyOptions):
    name: Literal["scaffold"] = "scaffold"
    server_lr: Annotated[float, Field(gt=0)] = 1.0  # eta_g


class Scaffold(Strategy):
    name = "scaffold"
    Options = ScaffoldOptions
    opts: ScaffoldOptions
    needs_store = True
    needs = frozenset({"scaffold"})

    @classmethod
    def check_job(cls, job: Any) -> tuple[str, str] | None:
        """Refuse client momentum. SCAFFOLD's corrections are constant vectors applied at every
        local step; momentum carries each of them ``1 / (1 - momentum)`` times as far with nothing
        to damp an error in them, and the method's analysis bounds the local step size
        (Karimireddy et al. 2020). The quickstart's momentum 0.9 reached 0.897 at round 6 and ran
        away to 0.092 by round 20; a warning let that run, so this is a refusal.

        The suggested rate is ``min(lr / (1 - momentum), 2 * lr)``: never a longer step than the
        job's own optimiser took, and at most twice its lr, because on the quickstart (lr 0.05,
        momentum 0.9) plain SGD at 2x was best (0.953 at round 20, above FedAvg's 0.944 on the
        same line), 3x fell back to 0.838 and 4x and 10x diverged."""
        if (problem := super().check_job(job)) is not None:
            return problem
        mu, lr = job.train.momentum, job.train.lr
        if not mu:
            return None
        return "train.momentum", (f"client momentum {mu:g} carries each of scaffold's per-step corrections "
                                  f"{1 / (1 - mu):.3g}x as far, which its variates do not survive (the quickstart "
                                  f"collapsed after round 6); set train.momentum: 0 and train.lr: "
                                  f"{min(lr / (1 - mu), 2 * lr):.3g}")

    def __init__(self, opts: ScaffoldOptions | None = None):
        super().__init__(opts)
        self.c: Params = OrderedDict()  # server control variate (float32, trainable params only)
        self.clients = 0

    def bind(self, clients: int, store_url: str | None) -> None:
        self.clients = clients

    def configure(self, rnd: int, clients: list[int], profiles: dict[str, np.ndarray]) -> dict[int, Instructions]:
        c = {k: v.astype(np.float32) for k, v in self.c.items()}
        return {cl: {"scaffold": {"c": c}} for cl in clients}

    @classmethod
    def site_weights(cls) -> str | None:
        return "examples"  # its server step is on the example-weighted mean; c moves by the mean delta

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        out = server_step(updates, global_params, lambda name, g, delta: g + self.opts.server_lr * delta,
                          self.kinds_of(global_params))
        total, count = self._control(updates)
        if count:
            share = count / max(self.clients, count)
            for name, v in total.items():
                self.c[name] = self.c.get(name, np.zeros_like(v)) + share * v / count
        return out

    @staticmethod
    def _control(updates: list[ClientUpdate]) -> tuple[Params, int]:
        """The sum of the fresh clients' c_i+ - c_i and their count: from each client's own
        update, or from a site's partial (its clients' mean delta, under round.aggregate: site)."""
        total: Params = OrderedDict()
        count = 0
        for u in updates:
            if u.staleness:
                continue
            if "scaffold_mean" in u.extras:
                k, delta = len(u.extras["scaffold_clients"]), u.extras["scaffold_mean"]
            elif "scaffold_delta_c" in u.extras:
                k, delta = 1, u.extras["scaffold_delta_c"]
            else:
                continue
            for name, v in delta.items():
                total[name] = total.get(name, 0.0) + k * np.asarray(v, np.float64)
            count += k
        return total, count

    def state(self) -> Params:
        return OrderedDict((f"c/{k}", v) for k, v in self.c.items())

    def load_state(self, state: Params) -> None:
        # (a checkpoint of an older fedgrid also holds references to variates in the store, under
        # ci/ and cp/: the variates now live in the clients' state, so those clients start over)
        self.c = OrderedDict((k[2:], np.asarray(v, np.float64)) for k, v in state.items() if k.startswith("c/"))
