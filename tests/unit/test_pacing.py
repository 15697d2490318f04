"""Heterogeneity-aware pacing (FedCompass-style local steps) and FedNova, against hand computations."""

from collections import OrderedDict
from pathlib import Path

import numpy as np

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.clients import pacing
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.config import parse_job
from fedgrid.flow.strategies.fedavg import FedAvg
from fedgrid.flow.strategies.fednova import FedNova


def _u(client, n, steps, w):
    return ClientUpdate(client=client, site="s", round=1, num_examples=n, extras={"steps": steps},
                        params=OrderedDict(w=np.array(w, dtype=np.float32)))


def test_fednova_normalises_by_local_steps():
    g = OrderedDict(w=np.array([1.0, 1.0], np.float32))
    ups = [_u(0, 10, 2, [0.0, 1.0]), _u(1, 30, 6, [1.0, -2.0])]
    out = FedNova().aggregate(1, g, ups, [])
    # p = [0.25, 0.75]; tau = [2, 6]; tau_eff = 0.5 + 4.5 = 5
    # step = 0.25 * (g - x0) / 2 + 0.75 * (g - x1) / 6 = [0.125, 0] + [0, 0.375] = [0.125, 0.375]
    np.testing.assert_allclose(out["w"], [1 - 5 * 0.125, 1 - 5 * 0.375], rtol=1e-6)
    # equal step counts: exactly FedAvg
    same = [_u(0, 10, 3, [0.0, 1.0]), _u(1, 30, 3, [1.0, -2.0])]
    fedavg = FedAvg().aggregate(1, g, same, [])
    nova = FedNova().aggregate(1, g, same, [])
    np.testing.assert_allclose(nova["w"], fedavg["w"], rtol=1e-6)


def test_deadline_pacing_trims_the_slow_and_extends_the_fast(make_job):
    job = parse_job(make_job(Path("/tmp/r"), train={"epochs": 2, "batch_size": 10},
                             round={"pace": "deadline", "pace_quantile": 0.5, "pace_min_fraction": 0.25}))
    p = prof.empty(6)
    assert pacing.assign_steps(job, [0, 1, 2], p) == {}  # round 1: no profiles, full work
    p["examples"][:] = 100  # full work: 2 epochs x 10 batches = 20 steps, 200 samples
    p["samples_per_s"][:] = [400, 400, 200, 200, 100, 12.5]  # full work takes 0.5, 0.5, 1, 1, 2, 16 s
    steps = pacing.assign_steps(job, [0, 1, 2, 3, 4, 5], p)
    # target = median of [0.5, 0.5, 1, 1, 2, 16] = 1 s: the fast ones keep their 20 steps (by default
    # never more than their full work), the x2-slower gets 10, the x32-slower would get 1.25 but is
    # held at the floor of 25% (5 steps)
    assert steps == {0: 20, 1: 20, 2: 20, 3: 20, 4: 10, 5: 5}
    job.round.pace_max_fraction = 2.0  # the x2-faster would idle half the round: it does 40 steps
    assert pacing.assign_steps(job, [0, 1, 2, 3, 4, 5], p) == {0: 40, 1: 40, 2: 20, 3: 20, 4: 10, 5: 5}
