"""round.late=carry: a late update joins a later round only if it passes the same checks as a
fresh one, its norm bound measured from the model it trained from."""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.config import parse_job
from fedgrid.flow.rounds.driver import Late
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.rounds.synchronous import _carry


def _late(client: int, rnd: int, w: float, base: OrderedDict) -> Late:
    fut: Future = Future()
    fut.set_result(ClientUpdate(client=client, site="a", round=rnd, num_examples=10,
                                params=OrderedDict(w=np.full(4, w, np.float32)), extras={"steps": 1}))
    return Late(rnd, client, fut, base)


def test_a_carried_update_is_held_to_the_norm_bound_from_its_own_round(make_job, tmp_path) -> None:
    job = parse_job(make_job(tmp_path / "r", round={"min_clients": 1, "late": "carry", "max_update_norm": 1.0},
                             sites=[{"name": "a", "executor": {"kind": "local"}, "clients": 6}]))
    drv = SimpleNamespace(job=job, sites=job.client_sites(), tasks=SimpleNamespace(area=None))
    old, now = OrderedDict(w=np.zeros(4, np.float32)), OrderedDict(w=np.full(4, 5.0, np.float32))
    g = Gathered()
    # client 1 moved 0.25 per weight from round 2's model (norm 0.5): carried into round 3, though
    # it is far from round 3's model. Client 2 moved 5 (norm 10 > 1): refused, though it lands on
    # round 3's model exactly.
    _carry(drv, 3, g, [_late(1, 2, 0.25, old), _late(2, 2, 5.0, old)], now)
    assert [(u.client, u.staleness) for u in g.updates] == [(1, 1)]
