"""Flower ClientApps run unchanged on fedgrid's htex sites.

- The numpy Message API app (tests/clients/flower_numpy_app.py) keeps a counter and a momentum
  buffer in ``Context.state`` that shape its updates, so its global model is a function of that
  state being exact. Run on an htex site of two workers with one client object per worker
  (clients move between workers and are rebuilt from their state every round), its driver
  SIGKILLed inside round 3 and the run resumed, it must end in the global model Flower's own
  simulation of the same app gives (1e-6), which runs beside it in a process of its own.
- The legacy torch app (NumPyClient, tests/clients/flower_torch_legacy.py) trains and evaluates
  on an htex site; its fit raising in round 2 is that client's failure, named with file and line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps import state as codec
from fedgrid.apps.flower import records
from fedgrid.apps.sitestate import FOLDER
from fedgrid.apps.store import Ref, fetch
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.rounds.runner import run

pytest.importorskip("flwr")
CLIENTS = Path(__file__).resolve().parents[1] / "clients"
ROUNDS, N, LR = 4, 4, 0.05


def _numpy_job(run_dir: Path) -> dict:
    sites = [{"name": "a", "executor": {"kind": "htex", "workers": 2}, "clients": N}]
    return {"name": "flower", "rounds": ROUNDS, "seed": 0,
            "client": {"flower": "flower_numpy_app:app", "initial": "flower_numpy_app:initial"},
            "data": {"dataset": "custom", "clients": N}, "train": {"lr": LR, "keep_clients": 1},
            "round": {"min_clients": N, "fraction": 1.0, "deadline_s": 90, "federated_every": 2},
            "sites": sites, "faults": [{"clients": [3], "hold_at": [3]}], "checkpoint": {"dir": str(run_dir)}}


def test_a_stateful_flower_app_killed_and_resumed_on_htex_ends_where_flowers_simulation_does(tmp_path,
                                                                                               sigkilled_in):
    sim_out = tmp_path / "flower.npz"
    sim = subprocess.Popen([sys.executable, str(CLIENTS / "flower_sim.py"), "flower_numpy_app", str(N), str(ROUNDS),
                            str(LR), str(sim_out)], cwd=CLIENTS, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = tmp_path / "run"
    sigkilled_in(_numpy_job(run_dir), run_dir, 3)  # client 3 holds round 3 open
    res = run(parse_job(_numpy_job(run_dir)), quiet=True)
    assert res.rounds_done == ROUNDS
    last = ckpt.read_round(ckpt.round_path(run_dir, ROUNDS))

    _, err = sim.communicate(timeout=300)
    assert sim.returncode == 0, err.decode()[-3000:]
    flower = dict(np.load(sim_out))
    assert list(last.params) == ["w", "b"]
    for k, v in flower.items():
        np.testing.assert_allclose(last.params[k], v, atol=1e-6, err_msg=k)

    # every client's Context.state, as the app left it after its last round: 4 rounds trained
    area = next((run_dir / "store").iterdir())
    for c in range(N):
        have, _ = prof.state_of(last.profiles, c)
        tree = codec.decode(fetch(Ref(f"{area}/{FOLDER.format(client=c)}/{have['sha256']}", have["sha256"],
                                      have["nbytes"])))
        state = records.state_from(tree["client"]["context_state"])
        assert int(state["progress"]["rounds"]) == ROUNDS, c
    rows = res.rows
    assert [r["round"] for r in rows if r.get("fed_mse") is not None] == [2, 4]
    assert all(r["train_loss"] > 0 and r["train_seen"] >= 0 for r in rows)


def test_a_legacy_torch_app_trains_and_evaluates_and_its_raising_fit_is_named(tmp_path):
    pytest.importorskip("sklearn")
    job = {"name": "legacy", "rounds": 2, "seed": 0,
           "client": {"flower": "flower_torch_legacy:app", "run_config": {"raise_at": 2}},
           "data": {"dataset": "custom", "clients": 3}, "train": {"lr": 0.1},
           "round": {"min_clients": 2, "fraction": 1.0, "deadline_s": 90, "federated_every": 1},
           "sites": [{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 3}],
           "checkpoint": {"dir": str(tmp_path / "run")}}
    res = run(parse_job(job), quiet=True)
    rows = res.rows
    assert [r["clients_ok"] for r in rows] == [3, 2]
    failed = rows[1]["failures"]
    assert len(failed) == 1 and failed[0]["client"] == 0
    assert failed[0]["reason"].startswith("ClientCodeError: ValueError: client 0 was told to fail in round 2 "
                                          "[at flower_torch_legacy.py:"), failed[0]["reason"]
    assert all(r["fed_accuracy"] is not None and r["train_loss"] > 0 for r in rows)
    assert rows[1]["fed_accuracy"] > 0.3
