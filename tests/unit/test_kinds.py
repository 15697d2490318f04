"""Params know what they are (apps/kinds.py): statistics buffers and counters are never stepped as a
gradient by a server rule, travel exact under compression, and each rule's result is checked against
hand numbers (the runs: tests/integration/test_batchnorm_run.py)."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest

from fedgrid.apps import codec
from fedgrid.apps.kinds import infer_kinds, param_kinds
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.strategies import STRATEGIES, make_strategy
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, weighted_mean

W, VAR, N = "conv.weight", "bn.running_var", "bn.num_batches_tracked"
KINDS = {W: "weight", VAR: "stat", N: "count"}


def G() -> Params:
    return OrderedDict([(W, np.array([1.0, 1.0], np.float32)), (VAR, np.array([1.0, 2.0], np.float32)),
                        (N, np.array(10, np.int64))])


def U(client: int, n: int, w: list[float], var: list[float], count: int) -> ClientUpdate:
    return ClientUpdate(client=client, site="s", round=1, num_examples=n, params=OrderedDict(
        [(W, np.array(w, np.float32)), (VAR, np.array(var, np.float32)), (N, np.array(count, np.int64))]))


# two clients, 10 and 30 examples: the weighted mean is w [1.5, 2], running_var [0.8, 2.5], count 16.25
UPDATES = [U(0, 10, [0.0, 2.0], [0.5, 1.0], 14), U(1, 30, [2.0, 2.0], [0.9, 3.0], 17)]
MEAN_W, MEAN_VAR, MEAN_N = [1.5, 2.0], [0.8, 2.5], 16


def make(name: str, **opts):
    return make_strategy(STRATEGIES[name].Options(name=name, **opts))


def test_param_kinds_tags_a_torch_module_in_state_dict_order() -> None:
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2))
    model[2].weight.requires_grad_(False)
    kinds = param_kinds(model)
    assert list(kinds) == list(model.state_dict())
    assert dict(kinds) == {"0.weight": "weight", "0.bias": "weight", "1.weight": "weight", "1.bias": "weight",
                           "1.running_mean": "stat", "1.running_var": "stat", "1.num_batches_tracked": "count",
                           "2.weight": "frozen", "2.bias": "weight"}
    # without the module: the same, except that a frozen parameter looks like any weight
    params = OrderedDict((k, v.numpy()) for k, v in model.state_dict().items())
    assert dict(infer_kinds(params)) == {**kinds, "2.weight": "weight"}
    assert infer_kinds(params, {"2.weight": "frozen"}) == kinds


def test_infer_kinds_takes_a_clients_word_and_refuses_what_cannot_be() -> None:
    params = OrderedDict(ema=np.zeros(3, np.float32), w=np.zeros(3, np.float32), steps=np.array(4, np.int32),
                         **{"norm/moving_variance": np.ones(3, np.float32)})
    assert dict(infer_kinds(params)) == {"ema": "weight", "w": "weight", "steps": "count",
                                         "norm/moving_variance": "stat"}
    assert infer_kinds(params, {"ema": "stat"})["ema"] == "stat"
    with pytest.raises(ValueError, match="do not have"):
        infer_kinds(params, {"emma": "stat"})
    with pytest.raises(ValueError, match="expected one of"):
        infer_kinds(params, {"ema": "buffer"})
    with pytest.raises(ValueError, match="must be 'count'"):
        infer_kinds(params, {"steps": "weight"})


def _check_buffers(out: Params, updates: list[ClientUpdate]) -> None:
    """The statistic is exactly the example-weighted mean, the counter a whole number."""
    np.testing.assert_array_equal(out[VAR], weighted_mean(updates, OrderedDict([(VAR, G()[VAR])]))[VAR])
    np.testing.assert_allclose(out[VAR], MEAN_VAR, rtol=1e-6)
    assert out[VAR].dtype == np.float32
    assert out[N].dtype == np.int64 and int(out[N]) == MEAN_N


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_steps_the_weights_and_averages_the_statistics(name: str) -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    s = make(name, server_lr=eta, beta_1=b1, beta_2=b2, tau=tau)
    s.kinds = KINDS
    out = s.aggregate(1, G(), UPDATES, [])
    _check_buffers(out, UPDATES)
    # the weights: delta = mean - G = [0.5, 1]; m = (1 - b1) delta; v from tau^2, each rule its own way
    for i, d in enumerate([0.5, 1.0]):
        v = {"fedadam": b2 * tau**2 + (1 - b2) * d * d, "fedadagrad": tau**2 + d * d,
             "fedyogi": tau**2 - (1 - b2) * d * d * math.copysign(1, tau**2 - d * d)}[name]
        assert float(out[W][i]) == pytest.approx(1.0 + eta * (1 - b1) * d / (math.sqrt(v) + tau), rel=1e-5)
    assert float(out[W][0]) != MEAN_W[0]  # the server step, not FedAvg's jump
    assert sorted(s.state()) == [f"m/{W}", f"v/{W}"]  # no moments for the buffers


def test_fedopt_matches_fedavg_on_the_weights_only() -> None:
    """The matched server rate measures FedAvg's step over the weights: a statistic's change is not
    a step the rule takes."""
    s = make("fedadam")
    s.kinds = KINDS
    out = s.aggregate(1, G(), UPDATES, [])
    step = np.asarray(out[W], np.float64) - 1.0
    np.testing.assert_allclose(np.linalg.norm(step), np.linalg.norm([0.5, 1.0]), rtol=1e-5)
    _check_buffers(out, UPDATES)


def test_an_old_checkpoint_with_moments_for_the_statistics_still_loads() -> None:
    s = make("fedadam", server_lr=0.1)
    s.load_state(OrderedDict([(f"m/{W}", np.zeros(2)), (f"v/{W}", np.full(2, 1e-6)),
                              (f"m/{VAR}", np.ones(2)), (f"v/{VAR}", np.ones(2))]))
    _check_buffers(s.aggregate(1, G(), UPDATES, []), UPDATES)  # kinds inferred: the round loop did not set them
    assert sorted(s.state()) == [f"m/{W}", f"v/{W}"]
    hb = make("fedavgm", momentum=0.5)
    hb.load_state(OrderedDict([(f"v/{W}", np.zeros(2)), (f"v/{VAR}", np.ones(2))]))
    _check_buffers(hb.aggregate(1, G(), UPDATES, []), UPDATES)
    assert sorted(hb.state()) == [f"v/{W}"]


def test_fedavgm_momentum_moves_the_weights_not_the_statistics() -> None:
    s = make("fedavgm", server_lr=2.0, momentum=0.5)
    s.kinds = KINDS
    g1 = s.aggregate(1, G(), UPDATES, [])
    # v = -(mean - G) = [-0.5, -1]; G' = G - 2 v
    np.testing.assert_allclose(g1[W], [2.0, 3.0])
    _check_buffers(g1, UPDATES)
    # round 2 from g1, the same clients: v = 0.5 * [-0.5, -1] - ([1.5, 2] - [2, 3]) = [0.25, 0.5]
    g2 = s.aggregate(2, g1, UPDATES, [])
    np.testing.assert_allclose(g2[W], [1.5, 2.0])
    _check_buffers(g2, UPDATES)
    assert sorted(s.state()) == [f"v/{W}"]


def test_a_folded_round_gives_its_mean_as_the_statistics() -> None:
    """A folded round (flow/rounds/fold.py) and secure aggregation hand the strategy one contribution,
    the mean already, with the counter still a float mean: it is taken as it is, rounded."""
    mean = OrderedDict([(W, np.array(MEAN_W, np.float32)), (VAR, np.array(MEAN_VAR, np.float32)),
                        (N, np.array(16.25))])
    one = [ClientUpdate(client=-1, site="fold", round=1, num_examples=40, params=mean)]
    s = make("fedadam", server_lr=0.1)
    s.kinds = KINDS
    out = s.aggregate(1, G(), one, [])
    np.testing.assert_array_equal(out[VAR], mean[VAR])
    assert out[N].dtype == np.int64 and int(out[N]) == 16


def test_robust_rules_take_their_own_robust_statistics_with_no_server_step() -> None:
    """Median and trimmed mean: the rule's value of each statistic, never stepped (momentum and a
    server rate here); one hostile client's statistics cannot set the model's, as a plain mean would."""
    hostile = U(2, 1000, [1.0, 1.0], [-1e6, 1e6], 10**9)
    ups = [*UPDATES, U(3, 20, [1.0, 3.0], [0.7, 2.0], 15), U(4, 5, [1.0, 2.0], [0.6, 2.2], 16), hostile]
    # running_var, sorted per coordinate: -1e6 0.5 0.6 0.7 0.9 and 1 2 2.2 3 1e6; counts 14 15 16 17 1e9
    for name, want in (("median", [0.6, 2.2]), ("trimmed_mean", [0.6, (2 + 2.2 + 3) / 3])):
        s = make(name, server_lr=0.5, momentum=0.9)  # trimmed_mean's beta 0.2 of 5: one cut at each end
        s.kinds = KINDS
        out = s.aggregate(1, G(), ups, [])
        np.testing.assert_allclose(out[VAR], want, rtol=1e-6)
        assert int(out[N]) == 16
        # the weights are stepped: the rule gives [1, 2] (0 1 1 1 2; 1 2 2 2 3), delta [0, 1]; v = -delta;
        # G' = G - 0.5 v
        np.testing.assert_allclose(out[W], [1.0, 1.5])
        assert sorted(s.state()) == [f"v/{W}"]


def test_krum_compares_weights_only_and_takes_the_median_of_the_statistics() -> None:
    ups = [U(c, 10, [float(c), 0.0], [1.0 + c, 1.0], 10 + c) for c in range(4)]
    ups.append(U(4, 10, [1.5, 0.0], [1e9, -1e9], 10**9))  # honest-looking weights, poisoned statistics
    s = make("multikrum", byzantine=1)
    s.kinds = KINDS
    plain = [U(u.client, 10, list(u.params[W]), [1.0, 1.0], 0) for u in ups]
    np.testing.assert_array_equal(s.scores(G(), ups), s.scores(G(), plain))  # statistics never enter the distances
    out = s.aggregate(1, G(), ups, [])
    np.testing.assert_allclose(out[VAR], [3.0, 1.0])  # median of 1, 2, 3, 4, 1e9 and of 1, 1, 1, 1, -1e9
    assert int(out[N]) == 12


def test_a_strategy_of_ones_own_is_settled_too() -> None:
    """Every subclass's aggregate passes through Strategy.settle: a rule that steps everything still
    leaves the statistics at the clients' mean."""

    class Opts(StrategyOptions):
        pass

    class Doubler(Strategy):
        name = "doubler"
        Options = Opts

        def aggregate(self, rnd, global_params, updates, failures):  # noqa: ANN001, ANN201 - a user's rule
            mean = weighted_mean(updates, global_params)
            return OrderedDict((k, (2 * mean[k] - global_params[k]).astype(v.dtype)) for k, v in global_params.items())

    out = Doubler().aggregate(1, G(), UPDATES, [])
    np.testing.assert_allclose(out[W], [2.0, 3.0])
    _check_buffers(out, UPDATES)


def test_compression_sends_statistics_and_counters_whole_and_exact() -> None:
    rng = np.random.default_rng(0)
    g = OrderedDict([("w", rng.normal(size=400).astype(np.float32)), (VAR, rng.random(64).astype(np.float32) + 0.5),
                     ("ema", rng.random(64).astype(np.float32)), (N, np.array(10, np.int64))])
    x = OrderedDict((k, (v + rng.normal(size=v.shape) * 0.01).astype(v.dtype) if v.dtype != np.int64
                     else np.array(25, np.int64)) for k, v in g.items())
    for name in ("topk", "int8", "fp16"):
        payload, left = codec.encode(x, g, name, topk_fraction=0.05, residual={}, seed=1, exact=[VAR, N, "ema"])
        back = codec.decode(payload, g, name)
        for k in (VAR, "ema", N):
            assert back[k].dtype == x[k].dtype
            np.testing.assert_array_equal(back[k], x[k], err_msg=f"{name} {k}")
        assert VAR not in left and "ema" not in left
        assert not np.array_equal(back["w"], x["w"])  # the weights are still compressed
    # with no list from the driver, the site infers it: BatchNorm's names are exact, "ema" is a delta
    back = codec.decode(codec.encode(x, g, "topk", topk_fraction=0.05, residual={})[0], g, "topk")
    np.testing.assert_array_equal(back[VAR], x[VAR])
    assert not np.array_equal(back["ema"], x["ema"])
    with pytest.raises(ValueError, match="has 3 values"):
        codec.decode({f"{VAR}/value": np.ones(3, np.float32)}, OrderedDict([(VAR, g[VAR])]), "topk")
