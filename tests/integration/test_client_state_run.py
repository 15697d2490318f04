"""Stateful clients are exact: a client keeping Adam's moments, BatchNorm statistics (in its params),
a schedule over rounds, an RNG and a counter ends in the same model and the same state whichever
worker runs it, and after its driver is SIGKILLed in round 6 and resumed. One run per setting, all
against one straight run on threads:

- two HTEX sites of two workers each, one client object per worker (`train.keep_clients: 1`), so
  clients move between workers and are rebuilt from their state all the time;
- the same job SIGKILLed inside round 6 (a held client keeps it there) and resumed to round 10.

Every run carries the same drills: client 0's updates are blown up and rejected every round (its
site wrote a state each time: none may become its state), client 1 raises in round 2, client 5
holds its round-6 answer (released at once in the straight runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrid.apps import state as codec
from fedgrid.apps.sitestate import FOLDER
from fedgrid.apps.store import Ref, Store, fetch
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.rounds.runner import run

ROUNDS = 10
FAULTS = [{"clients": [0], "scale_update": 1e6}, {"clients": [1], "raise_at": [2]}, {"clients": [5], "hold_at": [6]}]


def _job(make_job, run_dir: Path, kind: str = "local", workers: int = 1, keep: int = 64) -> dict:
    sites = [{"name": n, "executor": {"kind": kind, "workers": workers}, "clients": 4} for n in ("a", "b")]
    job = make_job(run_dir, rounds=ROUNDS, sites=sites, client="stateful_client:StatefulClient", faults=FAULTS,
                   data={"dataset": "digits", "clients": 8, "partition": {"kind": "dirichlet", "alpha": 0.5}},
                   train={"epochs": 1, "batch_size": 16, "lr": 0.05, "keep_clients": keep},
                   round={"min_clients": 5, "deadline_s": 60, "max_update_norm": 100.0, "federated_every": 5})
    job.pop("model")
    return job


def _released(run_dir: Path) -> None:
    (run_dir / "faults").mkdir(parents=True, exist_ok=True)
    (run_dir / "faults" / "release").touch()


def _final(run_dir: Path) -> tuple[dict, dict[int, object]]:
    """The last round's global params and every client's state, read as a user would."""
    last = ckpt.read_round(ckpt.round_path(run_dir, ROUNDS))
    area = next((run_dir / "store").iterdir())
    states = {}
    for c in range(8):
        have, _ = prof.state_of(last.profiles, c)
        if have is not None:
            folder = FOLDER.format(client=c)
            states[c] = codec.decode(fetch(Ref(f"{area}/{folder}/{have['sha256']}", have["sha256"], have["nbytes"])))
    return last.params, states


def _same(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor | np.ndarray):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=1e-6, err_msg=where)
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def straight(tmp_path_factory, make_job):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    _released(run_dir)
    run(parse_job(_job(make_job, run_dir)), quiet=True)
    params, states = _final(run_dir)
    # the drills did what they say: client 0 never got a state although its site wrote several
    assert 0 not in states and set(states) == set(range(1, 8))
    area = next((run_dir / "store").iterdir())
    assert Store(str(area)).keys(FOLDER.format(client=0)), "client 0's rejected attempts wrote no state"
    # client 1 failed round 2 and client 5 trained every round: their counters say so
    assert states[1]["client"]["calls"] == ROUNDS - 1 and states[5]["client"]["calls"] == ROUNDS
    return params, states


def test_two_workers_a_site_and_clients_rebuilt_every_round_change_nothing(tmp_path, make_job, straight):
    run_dir = tmp_path / "run"
    _released(run_dir)
    run(parse_job(_job(make_job, run_dir, kind="htex", workers=2, keep=1)), quiet=True)
    params, states = _final(run_dir)
    _same(straight[0], params, "params")
    _same(straight[1], states, "states")


def test_a_driver_sigkilled_in_round_6_resumes_to_the_same_model_and_client_states(tmp_path, make_job, straight,
                                                                                     sigkilled_in):
    run_dir = tmp_path / "run"
    sigkilled_in(_job(make_job, run_dir), run_dir, 6)  # client 5 holds round 6 open
    run(parse_job(_job(make_job, run_dir)), quiet=True)
    params, states = _final(run_dir)
    _same(straight[0], params, "params")
    _same(straight[1], states, "states")
