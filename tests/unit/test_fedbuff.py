"""FedBuff: the server step against a hand computation, and its options (the asynchronous loop in
a real run: tests/integration/test_fedbuff_run.py)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.config import ConfigError, parse_job
from fedgrid.flow.strategies.fedbuff import FedBuff, FedBuffOptions


def test_fedbuff_step_weights_examples_and_staleness() -> None:
    s = FedBuff(FedBuffOptions(buffer_size=2, server_lr=0.5, staleness_exponent=1.0))
    g = OrderedDict(w=np.array([1.0, 2.0], np.float32), n=np.array(4, np.int64))
    ups = []
    for client, n, delta, stale in ((0, 10, [1.0, 0.0], 0), (1, 30, [0.0, -4.0], 3)):
        u = ClientUpdate(client=client, site="s", round=1, num_examples=n,
                         params=OrderedDict(w=np.array(delta, np.float32), n=np.array(2, np.int64)))
        u.staleness, u.scale = stale, s.weight(stale)
        ups.append(u)
    assert ups[1].scale == pytest.approx(0.25)  # (1 + 3) ** -1
    out = s.aggregate(1, g, ups, [])
    # step = (10 * 1 * [1, 0] + 30 * 0.25 * [0, -4]) / 40 = [0.25, -0.75]; G + 0.5 * step
    np.testing.assert_allclose(out["w"], [1.125, 1.625], rtol=1e-6)
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64
    # a counter moves by the weighted mean change, without the server rate: 4 + 2
    assert int(out["n"]) == 4 + round((10 * 2 + 30 * 0.25 * 2) / (10 + 30 * 0.25))


def test_strategy_options_are_checked_per_strategy(make_job, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"strategy\.fedbuff\.buffer: unknown key"):
        parse_job(make_job(tmp_path, strategy={"name": "fedbuff", "buffer": 3}), "job.yaml")
    with pytest.raises(ConfigError, match="unknown strategy 'fedx'; expected one of fedavg"):
        parse_job(make_job(tmp_path, strategy={"name": "fedx"}), "job.yaml")
    assert parse_job(make_job(tmp_path, strategy="fedbuff")).strategy.buffer_size == 5


def test_fedbuff_moves_statistics_by_the_weighted_mean_change_without_its_server_rate() -> None:
    s = FedBuff(FedBuffOptions(buffer_size=2, server_lr=0.5, staleness_exponent=1.0))
    g = OrderedDict(w=np.zeros(2, np.float32), **{"bn.running_var": np.ones(2, np.float32)})
    ups = []
    for client, n, dv, stale in ((0, 10, [1.0, 0.0], 0), (1, 30, [0.0, -0.5], 3)):
        u = ClientUpdate(client=client, site="s", round=1, num_examples=n,
                         params=OrderedDict(w=np.ones(2, np.float32), **{"bn.running_var": np.array(dv, np.float32)}))
        u.staleness, u.scale = stale, s.weight(stale)
        ups.append(u)
    out = s.aggregate(1, g, ups, [])
    # weights 10 and 7.5 of 17.5: 1 + [10 / 17.5, -0.5 * 7.5 / 17.5]
    np.testing.assert_allclose(out["bn.running_var"], [1 + 10 / 17.5, 1 - 0.5 * 7.5 / 17.5], rtol=1e-6)
    np.testing.assert_allclose(out["w"], [0.5 * 17.5 / 40] * 2, rtol=1e-6)  # weights: G + server_lr * step
