"""Strategies in real runs: every strategy's defaults on the quickstart, exact resume, robustness
(threads; SCAFFOLD's resume with every client object rebuilt from its state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fedgrid.flow.config import ConfigError, parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.strategies import STRATEGIES

NON_IID = {"dataset": "digits", "clients": 6, "partition": {"kind": "dirichlet", "alpha": 0.1}}
IID = {"dataset": "digits", "clients": 6, "partition": {"kind": "iid"}}
TRAIN = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.5}
ROBUST = {"median": {}, "trimmed_mean": {"beta": 0.2}, "krum": {"byzantine": 1}, "multikrum": {"byzantine": 1}}
# the strategy math does not depend on the executor: threads keep these many runs fast (the HTEX
# path is SCAFFOLD's resume test's, and test_resume's)
THREADS = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}]


# scaffold refuses client momentum (its check_job): it runs on the plain-SGD line its refusal offers
# (for TRAIN's lr 0.05 and momentum 0.5, and for the quickstart's lr 0.05 and momentum 0.9: lr 0.1)
PLAIN_SGD = {"scaffold": {"momentum": 0.0, "lr": 0.1}}


def _job(make_job, run_dir, name: str, rounds: int, data: dict = NON_IID, **over):
    return parse_job(make_job(run_dir, rounds=rounds, model="mlp", data=data,
                              train={**TRAIN, **PLAIN_SGD.get(name, {})},
                              strategy={"name": name, **ROBUST.get(name, {})},
                              round={"min_clients": 4, "deadline_s": 120}, **over))


QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def _quickstart(run_dir: Path, strategy: str, rounds: int = 6):
    """The quickstart as a user runs it (client momentum 0.9, 5 local epochs), shorter, on threads;
    a strategy that refuses that train line runs on the one its refusal offers (scaffold: momentum
    0, lr 0.1, the line the quickstart's comment gives)."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.update(rounds=rounds, strategy={"name": strategy}, checkpoint={"dir": str(run_dir)},
               sites=[{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 10}])
    if strategy in PLAIN_SGD:
        with pytest.raises(ConfigError, match=r"train\.momentum: .*set train\.momentum: 0 and train\.lr: 0\.1$"):
            parse_job(raw, QUICKSTART)
        raw["train"] = {**raw["train"], **PLAIN_SGD[strategy]}
    return parse_job(raw, QUICKSTART)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_learns_with_its_defaults_on_the_quickstart(tmp_path, name: str) -> None:
    """Switching `strategy.name` and nothing else must not cost the model (issue 20: FedAdagrad's and
    FedAdam's old server rate of 0.01 reached 0.11 and 0.54 in these six rounds, and ended 20 rounds
    at 0.35 and 0.95 against FedAvg's 0.97). Six rounds are too few to compare the server optimisers,
    which start slower, with FedAvg (0.90 here): each rule must reach 0.6 (chance is 0.1), or 0.3
    if `fedgrid check` warns about it. The 20-round comparison is bench/strategies.py --defaults;
    FedAvgM's derived momentum, whose old value failed only after round 6, is a unit test."""
    from fedgrid.flow.config.checks import strategy_advice
    from fedgrid.flow.rounds.runner import run

    job = _quickstart(tmp_path / "run", name)
    acc = [r["test_accuracy"] for r in run(job, quiet=True).rows]
    assert len(acc) == 6
    assert max(acc) > (0.3 if strategy_advice(job) else 0.6), acc


# SCAFFOLD's client variates live in each client's state at its site: its resumed round 3 runs with
# `train.keep_clients: 1`, so every task rebuilds its client object and can only have its variate
# from the store (processes of their own: tests/integration/test_client_state_run.py)


@pytest.mark.parametrize("name", ["fedadam", "scaffold"])  # (fedavgm's state round trip: test_strategies)
def test_resume_takes_the_same_next_round(tmp_path, make_job, name: str) -> None:
    """Server-optimiser state (and SCAFFOLD's variates in the clients' state) survive a stop after round 2."""
    from fedgrid.flow.rounds.runner import run

    run(_job(make_job, tmp_path / "whole", name, 3, sites=THREADS), quiet=True)
    run(_job(make_job, tmp_path / "split", name, 2, sites=THREADS), quiet=True)
    resumed = _job(make_job, tmp_path / "split", name, 3, sites=THREADS)
    if name == "scaffold":
        resumed = resumed.model_copy(update={"train": resumed.train.model_copy(update={"keep_clients": 1})})
    assert run(resumed, quiet=True).resumed_from == 2
    a = ckpt.read_round(ckpt.round_path(tmp_path / "whole", 3))
    b = ckpt.read_round(ckpt.round_path(tmp_path / "split", 3))
    assert a.strategy.keys() == b.strategy.keys() and a.strategy
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


_CLEAN: dict[str, float] = {}


@pytest.fixture
def clean_iid(tmp_path_factory, make_job) -> float:
    """FedAvg's accuracy on IID digits without attackers (run once, shared by the tests below)."""
    from fedgrid.flow.rounds.runner import run

    if "acc" not in _CLEAN:
        job = _job(make_job, tmp_path_factory.mktemp("clean"), "fedavg", 5, data=IID, sites=THREADS)
        _CLEAN["acc"] = run(job, quiet=True).rows[-1]["test_accuracy"]
    return _CLEAN["acc"]


BAD = [{"clients": [2], "scale_update": -10.0}]  # one client of six sends G - 10 (x - G)


@pytest.mark.parametrize("name", ["fedavg", *sorted(ROBUST)])
def test_robust_rules_hold_against_a_byzantine_client(tmp_path, make_job, clean_iid: float, name: str) -> None:
    from fedgrid.flow.rounds.runner import run

    acc = run(_job(make_job, tmp_path / "run", name, 5, data=IID, faults=BAD, sites=THREADS),
              quiet=True).rows[-1]["test_accuracy"]
    if name == "fedavg":
        assert acc < clean_iid - 0.3  # one flipped, x10 update wrecks the mean
    else:
        assert acc > clean_iid - 0.1, (acc, clean_iid)


def test_bad_updates_are_rejected_with_a_reason_and_the_round_goes_on(tmp_path, make_job, clean_iid) -> None:
    from fedgrid.flow.rounds.runner import run

    job = _job(make_job, tmp_path / "bounded", "fedavg", 3, data=IID, faults=BAD, sites=THREADS)
    job.round.max_update_norm = 3.0  # honest updates are about 1 here, the bad one about 10
    rows = run(job, quiet=True).rows
    for r in rows:
        assert 2 not in r["participants"]
        (f,) = [f for f in r["failures"] if f["client"] == 2]
        assert f["reason"].startswith("InvalidUpdate: rejected: update norm")
    assert rows[-1]["test_accuracy"] > clean_iid - 0.15
