"""Personalization against hand computations (tests/clients/quad_client.py: each client's training
is a closed form): FedBN's normalization layers and FedPer's head stay at each client and out of
the global model, Ditto's personal model follows its regularised recurrence, and federated
evaluation reports the personalized model beside the global one. On threads: what is checked is
the arithmetic of what is kept where, whatever the executor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fedgrid.apps import state as codec
from fedgrid.apps.sitestate import FOLDER
from fedgrid.apps.store import Ref, fetch
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.table import rows_path
from fedgrid.flow.rounds.runner import run

CLIENTS, ROUNDS, LR = 4, 3, 0.5
T = {c: (c + 1) * np.array([1.0, 2.0, 3.0]) for c in range(CLIENTS)}
N = {c: 10 + c for c in range(CLIENTS)}


def _run(make_job, run_dir: Path, personal: dict) -> tuple[dict, dict]:
    job = make_job(run_dir, rounds=ROUNDS, client="quad_client:QuadClient", personal=personal,
                   data={"dataset": "custom", "clients": CLIENTS},
                   sites=[{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": CLIENTS}],
                   train={"epochs": 1, "batch_size": 1, "lr": LR},
                   round={"min_clients": CLIENTS, "deadline_s": 60, "federated_every": 1})
    job.pop("model")
    run(parse_job(job), quiet=True)
    last = ckpt.read_round(ckpt.round_path(run_dir, ROUNDS))
    area = next((run_dir / "store").iterdir())
    kept = {}
    for c in range(CLIENTS):
        have, _ = prof.state_of(last.profiles, c)
        kept[c] = codec.decode(fetch(Ref(f"{area}/{FOLDER.format(client=c)}/{have['sha256']}", have["sha256"],
                                         have["nbytes"])))
    return last.params, kept


def _fedavg_w(steps_from) -> np.ndarray:
    """Round after round of FedAvg on the shared weight: each client steps from G toward its target."""
    g = np.zeros(3)
    for _ in range(ROUNDS):
        g = sum(N[c] * steps_from(g, c) for c in range(CLIENTS)) / sum(N.values())
    return g


def test_fedbn_and_fedper_layers_stay_at_their_clients(tmp_path, make_job):
    params, kept = _run(make_job, tmp_path / "run", {"layers": ["norm", "head.*"]})
    np.testing.assert_allclose(params["w"], _fedavg_w(lambda g, c: g - LR * (g - T[c])), rtol=1e-6)
    # the global model's personal layers are still round 0's: nothing personal was averaged
    np.testing.assert_array_equal(params["bn.running_mean"], np.zeros(3))
    np.testing.assert_array_equal(params["head.weight"], np.zeros(3))
    for c in range(CLIENTS):  # each trained from its own values every round: t (1 - (1 - lr)^rounds)
        mine = T[c] * (1 - (1 - LR) ** ROUNDS)
        assert set(kept[c]["personal"]) == {"bn.running_mean", "head.weight"}
        for name in ("bn.running_mean", "head.weight"):
            np.testing.assert_allclose(kept[c]["personal"][name], mine, rtol=1e-6)
    rows = pq.read_table(rows_path(tmp_path / "run")).to_pylist()
    assert rows[-1]["fed_personal_dist"] < rows[-1]["fed_dist"]  # what personalization buys, in the row


def test_ditto_keeps_a_personal_model_regularised_toward_the_global_one(tmp_path, make_job):
    lam, epochs = 0.3, 2
    params, kept = _run(make_job, tmp_path / "run", {"ditto": {"lam": lam, "epochs": epochs}})
    step = lambda g, c: g - LR * (g - T[c])  # noqa: E731 - the clients' FedAvg training
    want_g = _fedavg_w(step)
    for name in params:  # plain FedAvg on every param: Ditto does not change what is sent
        np.testing.assert_allclose(params[name], want_g, rtol=1e-6)
    g, v = np.zeros(3), {c: None for c in range(CLIENTS)}
    for _ in range(ROUNDS):
        for c in range(CLIENTS):
            x = g.copy() if v[c] is None else v[c]
            for _ in range(epochs):
                x = x - LR * ((x - T[c]) + lam * (x - g))
            v[c] = x
        g = sum(N[c] * step(g, c) for c in range(CLIENTS)) / sum(N.values())
    for c in range(CLIENTS):
        for name in params:
            np.testing.assert_allclose(kept[c]["ditto"][name], v[c], rtol=1e-5)
    rows = pq.read_table(rows_path(tmp_path / "run")).to_pylist()
    assert rows[-1]["fed_personal_dist"] < rows[-1]["fed_dist"]
