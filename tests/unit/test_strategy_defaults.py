"""Strategy defaults derived from the job (issue 20), and the warnings `fedgrid check` prints."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.commands.cli import main
from fedgrid.flow.config import ConfigError, load_job, parse_job
from fedgrid.flow.config.checks import strategy_advice
from fedgrid.flow.strategies import STRATEGIES, make_strategy

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def _job(make_job, strategy: dict, **train):
    return parse_job(make_job(Path("/tmp/r"), strategy=strategy, train={"lr": 0.05, **train}))


@pytest.mark.parametrize(("client", "rounds", "server"), [(0.0, 30, 0.9), (0.0, 10, 0.5), (0.9, 30, 0.5),
                                                        (0.5, 100, 0.5)])
def test_fedavgm_momentum_follows_the_clients_optimiser_and_the_jobs_length(make_job, client: float, rounds: int,
                                                                           server: float) -> None:
    job = parse_job(make_job(Path("/tmp/r"), rounds=rounds, strategy={"name": "fedavgm"},
                             train={"lr": 0.05, "momentum": client}))
    assert job.strategy.momentum == server
    assert make_strategy(job.strategy).hb.momentum == server


def test_a_momentum_the_job_sets_is_kept(make_job) -> None:
    assert _job(make_job, {"name": "fedavgm", "momentum": 0.9}, momentum=0.9).strategy.momentum == 0.9


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_rules_match_fedavgs_first_step_and_keep_that_rate(name: str) -> None:
    """Unset server_lr: round 1 steps exactly as far as FedAvg (the mean itself); the rate found
    is state, so a resumed run's round 2 is the uninterrupted one's."""
    g = OrderedDict(w=np.array([0.0, 0.0, 1.0], np.float32), b=np.array([0.5], np.float32))
    ups = [ClientUpdate(client=i, site="s", round=1, num_examples=n,
                        params=OrderedDict(w=np.array(w, np.float32), b=np.array([bb], np.float32)))
           for i, (n, w, bb) in enumerate([(1, [0.3, -0.1, 1.2], 0.4), (3, [0.1, 0.0, 0.6], 0.9)])]
    avg = {k: sum(u.num_examples * u.params[k].astype(np.float64) for u in ups) / 4 for k in g}
    s = make_strategy(STRATEGIES[name].Options(name=name))
    out = s.aggregate(1, g, ups, [])
    moved = np.sqrt(sum(np.square(out[k].astype(np.float64) - g[k]).sum() for k in g))
    fedavg = np.sqrt(sum(np.square(avg[k] - g[k]).sum() for k in g))
    assert moved == pytest.approx(fedavg, rel=1e-5)
    assert float(s.state()["lr"]) == pytest.approx(s.lr)
    resumed = make_strategy(STRATEGIES[name].Options(name=name))
    resumed.load_state(s.state())
    a, b = s.aggregate(2, out, ups, []), resumed.aggregate(2, out, ups, [])
    for k in g:
        np.testing.assert_array_equal(a[k], b[k])
    fixed = make_strategy(STRATEGIES[name].Options(name=name, server_lr=0.5))
    fixed.aggregate(1, g, ups, [])
    assert fixed.lr == 0.5 and "lr" not in fixed.state()


def test_scaffold_with_the_quickstarts_momentum_is_refused_with_the_line_that_runs(capsys) -> None:
    """The shipped quickstart (momentum 0.9) under scaffold reached 0.897 at round 6 and 0.092 at
    round 20: `fedgrid check` refuses it naming train.momentum, and the train line it offers passes."""
    with pytest.raises(ConfigError) as refused:
        load_job(QUICKSTART, ["strategy.name=scaffold"])
    assert refused.value.key == "train.momentum" and "\n" not in str(refused.value)
    assert refused.value.expected.endswith("set train.momentum: 0 and train.lr: 0.1")
    assert main(["check", str(QUICKSTART), "--set", "strategy.name=scaffold"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {QUICKSTART}: train.momentum: ") and err.count("\n") == 1
    fixed = ["strategy.name=scaffold", "train.momentum=0", "train.lr=0.1"]
    assert load_job(QUICKSTART, fixed).strategy.name == "scaffold"
    assert main(["check", str(QUICKSTART), *(a for kv in fixed for a in ("--set", kv))]) == 0
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize(("momentum", "lr", "offered"), [(0.9, 0.05, 0.1), (0.5, 0.05, 0.1), (0.3, 0.07, 0.1),
                                                          (0.9, 0.02, 0.04)])
def test_scaffold_offers_no_longer_step_than_the_job_took(make_job, momentum: float, lr: float,
                                                         offered: float) -> None:
    """min(lr / (1 - momentum), 2 lr): the quickstart's measured best was 2 lr, 4 lr diverged."""
    with pytest.raises(ConfigError, match=rf"train\.momentum: .* train\.lr: {offered:g}$"):
        _job(make_job, {"name": "scaffold"}, momentum=momentum, lr=lr)
    assert _job(make_job, {"name": "scaffold"}, momentum=0.0, lr=offered).strategy.name == "scaffold"


def test_check_prints_the_derived_options(capsys) -> None:
    assert main(["check", str(QUICKSTART), "--set", "strategy.name=fedavgm"]) == 0
    assert "strategy fedavgm (server_lr 1, momentum 0.5)" in capsys.readouterr().out


def test_every_strategy_advice_is_a_key_and_a_line(make_job) -> None:
    for name in STRATEGIES:
        for key, why in strategy_advice(_job(make_job, {"name": name}, momentum=0.0)):
            assert key and "\n" not in why and len(why) > 20


def test_cosine_server_rate_runs_over_the_jobs_rounds(make_job) -> None:
    job = parse_job(make_job(Path("/tmp/r"), rounds=30, strategy={"name": "fedadam", "server_lr": 0.03,
                                                                  "decay": "cosine"}))
    assert job.strategy.decay_rounds == 30
    s = make_strategy(job.strategy)
    assert s.scale(1) == 1.0 and s.scale(16) == pytest.approx(0.5) and 0 < s.scale(30) < 0.01
    assert make_strategy(STRATEGIES["fedyogi"].Options(name="fedyogi")).scale(30) == 1.0
