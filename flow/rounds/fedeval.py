"""Federated evaluation: clients evaluate the new global model on their own held-out data.

Every ``round.federated_every`` rounds (and on the last), after the aggregation, a share
(``round.federated_fraction``) of all clients gets an evaluate task with the new global params. The
answers are gathered like a round's (deadline, failures as data, site loss) and summarised into
the round's row: per metric the example-weighted mean (``fed_<name>``), the lowest client
(``fed_<name>_min``) and the 10th percentile across clients (``fed_<name>_p10``), and every
client's values (``fed_clients``). A job whose data never leaves the sites, even for testing,
is evaluated this way.
"""

from __future__ import annotations

import time
from typing import cast

import numpy as np

from fedgrid.apps.records import FailureRow, RoundRow, set_columns
from fedgrid.apps.update import ClientEvaluation
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.rounds import validate
from fedgrid.flow.rounds.driver import Driver
from fedgrid.flow.rounds.gather import gather

Params = dict[str, np.ndarray]


def due(drv: Driver, rnd: int) -> bool:
    every = drv.job.round.federated_every
    return every > 0 and (rnd % every == 0 or rnd == drv.job.rounds)


def _clients(drv: Driver, rnd: int) -> list[int]:
    """The clients asked: a seeded sample of its own (selection's RNG is not touched, so turning
    federated evaluation on changes nothing about training)."""
    n = drv.job.data.clients
    k = max(1, round(drv.job.round.federated_fraction * n))
    rng = np.random.default_rng([drv.job.seed, rnd, 0xE7A1])
    return sorted(int(c) for c in rng.choice(n, size=k, replace=False))


# the row's own fed_* fields: a metric of these names would overwrite them (and the rounds table
# could no longer be written)
RESERVED = frozenset({"clients", "failures", "s", "examples"})


def _checker(rnd: int):  # noqa: ANN202 - the gather's accept hook
    def check(client: int, site: str, e: ClientEvaluation) -> ClientEvaluation:
        if not isinstance(e, ClientEvaluation):
            raise validate.InvalidUpdate(f"rejected: the site answered {type(e).__name__}, expected an evaluation")
        validate.envelope(e, client, site, rnd)  # checked in place (an evaluation comes back as itself)
        if taken := sorted(RESERVED & set(e.metrics)):
            raise validate.InvalidUpdate(f"rejected: metric {taken[0]!r} is a name the row keeps for itself "
                                         f"(fed_{taken[0]}); rename it in the client's evaluate()")
        return e
    return check


def evaluate(drv: Driver, rnd: int, params: Params) -> RoundRow:
    """Run round `rnd`'s federated evaluation of `params`; the row's fed_* fields."""
    t0 = time.time()
    clients = _clients(drv, rnd)
    sent = drv.tasks.outgoing(rnd, params, "evaluated")
    down = drv.runtime.down_sites()
    futs = {c: (drv.sites[c], drv.runtime.evaluate(drv.sites[c], drv.tasks.train(
        c, rnd, sent[drv.sites[c]], state=prof.state_of(drv.profiles, c))))
        for c in clients if drv.sites[c] not in down}
    g = gather(futs, 0, drv.job.round.deadline_s, accept=_checker(rnd), down=drv.down)
    # the gather's updates are what its accept hook returned: `_checker` returns only evaluations
    evals = cast("list[ClientEvaluation]", g.updates)
    return summary(evals, [f.row() for f in g.failures], time.time() - t0)


def summary(evals: list[ClientEvaluation], failures: list[FailureRow], seconds: float) -> RoundRow:
    """The fed_* fields of a row from the clients' evaluations."""
    out: RoundRow = {
        "fed_clients": [{"client": e.client, "site": e.site, "examples": e.num_examples,
                         "metrics": [{"name": k, "value": v} for k, v in e.metrics.items()]} for e in evals],
        "fed_failures": failures, "fed_s": seconds, "fed_examples": sum(e.num_examples for e in evals)}
    columns: dict[str, float] = {}  # per metric, named by the clients
    for name in dict.fromkeys(k for e in evals for k in e.metrics):
        have = [e for e in evals if name in e.metrics]
        vals = np.array([e.metrics[name] for e in have])
        w = np.array([e.num_examples for e in have], dtype=np.float64)
        columns[f"fed_{name}"] = float((vals * w).sum() / w.sum())
        columns[f"fed_{name}_min"] = float(vals.min())
        columns[f"fed_{name}_p10"] = float(np.percentile(vals, 10))
    return set_columns(out, columns)
