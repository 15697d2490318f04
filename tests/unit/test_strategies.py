"""Every strategy against a hand computation on tiny arrays (server-optimiser states across two
rounds included), and the update validation rules."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.config import parse_job
from fedgrid.flow.rounds.validate import InvalidUpdate, check
from fedgrid.flow.strategies import STRATEGIES, make_strategy


def P(*w: float) -> OrderedDict:
    return OrderedDict(w=np.array(w, np.float32))


def U(client: int, n: int, *w: float, **extras) -> ClientUpdate:
    return ClientUpdate(client=client, site="s", round=1, num_examples=n, params=P(*w), extras=extras)


def make(name: str, **opts):
    return make_strategy(STRATEGIES[name].Options(name=name, **opts))


def test_every_strategy_is_selectable_by_name(make_job) -> None:
    for name in STRATEGIES:
        job = parse_job(make_job(Path("/tmp/r"), strategy={"name": name}, train={"momentum": 0.0}))
        assert make_strategy(job.strategy).opts.name == name


def test_fedavgm_momentum_over_two_rounds_and_resume() -> None:
    s = make("fedavgm", server_lr=1.0, momentum=0.5)
    g1 = s.aggregate(1, P(1, 1), [U(0, 1, 0, 2)], [])
    # grad = G - avg = [1, -1]; v = [1, -1]; G' = G - v
    np.testing.assert_allclose(g1["w"], [0, 2])
    again = make("fedavgm", server_lr=1.0, momentum=0.5)
    again.load_state(s.state())
    g2 = s.aggregate(2, g1, [U(0, 1, 0, 1)], [])
    # grad = [0, 1]; v = 0.5 * [1, -1] + [0, 1] = [0.5, 0.5]; G' = [0, 2] - v
    np.testing.assert_allclose(g2["w"], [-0.5, 1.5])
    np.testing.assert_array_equal(again.aggregate(2, g1, [U(0, 1, 0, 1)], [])["w"], g2["w"])


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_two_rounds_by_hand(name: str) -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    s = make(name, server_lr=eta, beta_1=b1, beta_2=b2, tau=tau)
    v0 = tau**2

    def v_next(v: float, d: float) -> float:
        return {"fedadam": b2 * v + (1 - b2) * d * d,
                "fedyogi": v - (1 - b2) * d * d * math.copysign(1.0, v - d * d),
                "fedadagrad": v + d * d}[name]

    # round 1: G = 0, two clients (1 and 3 examples) at 2 and -2: avg = -1, delta = -1
    g1 = s.aggregate(1, P(0.0), [U(0, 1, 2.0), U(1, 3, -2.0)], [])
    m1, v1 = (1 - b1) * -1.0, v_next(v0, -1.0)
    x1 = eta * m1 / (math.sqrt(v1) + tau)
    assert float(g1["w"][0]) == pytest.approx(x1, rel=1e-5)
    state = s.state()
    np.testing.assert_allclose(state["m/w"], [m1])
    np.testing.assert_allclose(state["v/w"], [v1])
    # round 2: one client at x1 + 0.5: delta = 0.5
    g2 = s.aggregate(2, g1, [U(0, 5, float(g1["w"][0]) + 0.5)], [])
    m2, v2 = b1 * m1 + (1 - b1) * 0.5, v_next(v1, 0.5)
    assert float(g2["w"][0]) == pytest.approx(float(g1["w"][0]) + eta * m2 / (math.sqrt(v2) + tau), rel=1e-5)
    resumed = make(name, server_lr=eta, beta_1=b1, beta_2=b2, tau=tau)
    resumed.load_state(state)
    np.testing.assert_array_equal(resumed.aggregate(2, g1, [U(0, 5, float(g1["w"][0]) + 0.5)], [])["w"], g2["w"])


def test_fedprox_asks_clients_for_the_proximal_term() -> None:
    s = make("fedprox", mu=0.3)
    assert s.configure(1, [2, 5], {}) == {2: {"prox_mu": 0.3}, 5: {"prox_mu": 0.3}}
    np.testing.assert_allclose(s.aggregate(1, P(0, 0), [U(0, 1, 1, 0), U(1, 3, 0, 4)], [])["w"], [0.25, 3.0])


def test_scaffold_server_step_and_control_variate(tmp_path) -> None:
    s = make("scaffold", server_lr=1.0)
    s.bind(clients=4, store_url=str(tmp_path))
    assert s.configure(3, [1], {})[1] == {"scaffold": {"c": {}}}  # c_i is the client's own state, at its site
    ups = [U(0, 1, 2.0, scaffold_delta_c={"w": np.array([1.0])}),
           U(1, 1, 4.0, scaffold_delta_c={"w": np.array([3.0])})]
    out = s.aggregate(3, P(0.0), ups, [])
    np.testing.assert_allclose(out["w"], [3.0])  # G + mean(y - G)
    np.testing.assert_allclose(s.c["w"], [2 / 4 * 2.0])  # c + |S|/N * mean(delta c)
    np.testing.assert_allclose(s.configure(4, [0], {})[0]["scaffold"]["c"]["w"], [1.0])
    back = make("scaffold")
    old = {**s.state(), "ci/0/uri": np.frombuffer(b"u", np.uint8)}  # an older checkpoint's references
    back.load_state(old)
    assert np.array_equal(back.c["w"], s.c["w"]) and list(back.state()) == ["c/w"]


def test_median_and_trimmed_mean_ignore_an_outlier() -> None:
    ups = [U(0, 1, 1, 10), U(1, 1, 2, 20), U(2, 1, 3, 30), U(3, 1, 4, 40), U(4, 100, 1000, -1000)]
    np.testing.assert_allclose(make("median").aggregate(1, P(0, 0), ups, [])["w"], [3, 20])
    # beta 0.2 of 5: one value cut at each end of each coordinate: [2, 3, 4] and [10, 20, 30]
    np.testing.assert_allclose(make("trimmed_mean", beta=0.2).aggregate(1, P(0, 0), ups, [])["w"], [3, 20])
    np.testing.assert_allclose(make("trimmed_mean", beta=0.0).aggregate(1, P(0, 0), ups, [])["w"], [202, -180])


def test_krum_picks_the_update_closest_to_its_neighbours() -> None:
    ups = [U(0, 1, 0.0), U(1, 1, 1.0), U(2, 1, 3.0), U(3, 1, 100.0), U(4, 1, 2.0)]
    s = make("krum", byzantine=1)
    # k=5, f=1: sum of squared distances to the 2 nearest others
    # 0: 1+4=5  1: 1+1=2  3.0: 1+4=5  100: 97^2+98^2  2.0: 1+1=2  -> tie 1 and 4, the first wins
    np.testing.assert_allclose(s.scores(P(0.0), ups), [5, 2, 5, 97**2 + 98**2, 2])
    np.testing.assert_allclose(s.aggregate(1, P(0.0), ups, [])["w"], [1.0])
    multi = make("multikrum", byzantine=1)  # keeps k - f = 4: everyone but the outlier
    np.testing.assert_allclose(multi.aggregate(1, P(0.0), ups, [])["w"], [1.5])
    np.testing.assert_allclose(make("multikrum", byzantine=1, keep=2).aggregate(1, P(0.0), ups, [])["w"], [1.5])


def test_bucketing_groups_by_round_and_ids_not_arrival_order() -> None:
    from fedgrid.flow.strategies.robust import bucketed

    ups = [U(c, c + 1, float(c)) for c in range(7)]
    b = bucketed(ups, 2, rnd=3)
    assert [len(x.params) for x in b] == [1] * 4 and sum(x.num_examples for x in b) == sum(range(1, 8))
    # every bucket is the example-weighted mean of the clients it holds (each client in exactly one)
    members = []
    for x in b:
        group = [u for u in ups if u.client in _members(x, ups)]
        members += [u.client for u in group]
        want = sum(u.num_examples * u.params["w"][0] for u in group) / sum(u.num_examples for u in group)
        assert x.params["w"][0] == pytest.approx(want, rel=1e-6)
    assert sorted(members) == list(range(7))
    again = bucketed(list(reversed(ups)), 2, rnd=3)  # another arrival order: the same buckets
    assert [x.params["w"].tolist() for x in again] == [x.params["w"].tolist() for x in b]
    other = bucketed(ups, 2, rnd=4)  # another round: another grouping
    assert [x.params["w"].tolist() for x in other] != [x.params["w"].tolist() for x in b]
    assert bucketed(ups, 1, rnd=3) is ups


def _members(bucket: ClientUpdate, ups: list[ClientUpdate]) -> set[int]:
    """Which clients a bucket of two (or one) holds: the pair whose weighted mean it is."""
    w, n = float(bucket.params["w"][0]), bucket.num_examples
    for a in ups:
        if a.num_examples == n and abs(float(a.params["w"][0]) - w) < 1e-6:
            return {a.client}
        for b in ups:
            if b.client > a.client and a.num_examples + b.num_examples == n and abs(
                    (a.num_examples * a.params["w"][0] + b.num_examples * b.params["w"][0]) / n - w) < 1e-5:
                return {a.client, b.client}
    raise AssertionError(f"no pair of clients makes {w} over {n} examples")


def test_bucketed_median_keeps_the_honest_majority_and_more_of_their_spread() -> None:
    # 8 honest clients with values 0..7 and 2 hostile ones at 1000: the median of 5 bucket means
    # stays within the honest range, and bucket 1 (off) is the plain median
    ups = [U(c, 1, float(c)) for c in range(8)] + [U(8, 1, 1000.0), U(9, 1, 1000.0)]
    plain = make("median").aggregate(1, P(0.0), ups, [])["w"][0]
    assert plain == pytest.approx(4.5)
    for rnd in range(1, 20):
        got = make("median", bucket=2).aggregate(rnd, P(0.0), ups, [])["w"][0]
        assert 0.5 <= got <= 6.5, (rnd, got)  # a mean of two honest values: never a hostile bucket
    # Krum counts bad buckets: f=2 of 5 buckets is below 2f+3, so it falls back to the median
    assert 0.5 <= make("krum", byzantine=2, bucket=2).aggregate(1, P(0.0), ups, [])["w"][0] <= 6.5
    with pytest.raises(ValueError):
        make("median", bucket=0)


def test_robust_rule_with_server_momentum_over_two_rounds_and_resume() -> None:
    ups = [U(0, 1, 1.0), U(1, 1, 2.0), U(2, 1, 3.0), U(3, 1, 100.0), U(4, 1, -100.0)]  # median 2
    s = make("median", momentum=0.5, server_lr=1.0)
    g1 = s.aggregate(1, P(0.0), ups, [])["w"][0]  # v = -(2 - 0) = -2; G = 0 + 2
    assert g1 == pytest.approx(2.0)
    resumed = make("median", momentum=0.5, server_lr=1.0)
    resumed.load_state(s.state())
    ups2 = [U(c, 1, x) for c, x in enumerate([3.0, 4.0, 5.0, 1e6, -1e6])]  # median 4: v = 0.5*-2 - 2 = -3
    assert s.aggregate(2, P(g1), ups2, [])["w"][0] == pytest.approx(5.0)
    assert resumed.aggregate(2, P(g1), ups2, [])["w"][0] == pytest.approx(5.0)
    assert make("median").state() == OrderedDict()  # the rule alone keeps no state


def test_validation_rejects_with_a_reason() -> None:
    g = OrderedDict(w=np.zeros(2, np.float32), n=np.array(0, np.int64))

    def upd(**params) -> ClientUpdate:
        return ClientUpdate(client=0, site="s", round=1, num_examples=5, params=OrderedDict(params))

    ok = upd(w=np.ones(2, np.float32), n=np.array(3, np.int64))
    assert check(ok, g, max_norm=2.0) is ok
    cases = [
        (upd(w=np.ones(2, np.float32)), "names differ"),
        (upd(w=np.ones(3, np.float32), n=np.array(3, np.int64)), r"w has shape \(3,\), expected \(2,\)"),
        (upd(w=np.ones(2, np.float64), n=np.array(3, np.int64)), "dtype float64, expected float32"),
        (upd(w=np.array([1, np.nan], np.float32), n=np.array(3, np.int64)), "non-finite"),
    ]
    for u, reason in cases:
        with pytest.raises(InvalidUpdate, match=reason):
            check(u, g)
    with pytest.raises(InvalidUpdate, match=r"update norm 1.41 > round.max_update_norm 1"):
        check(ok, g, max_norm=1.0)
