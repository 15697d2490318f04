"""Two-tier aggregation's halves without executors: the site's aggregator on a real store, the
driver's check of a site's partial, the strategies' partial sums, and what the job file refuses."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest

from fedgrid.apps.siteagg import CONTROL, SiteAggTask, SitePartial, aggregate_site
from fedgrid.apps.store import Store
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.config import ConfigError, parse_job
from fedgrid.flow.rounds import twotier
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.strategies import STRATEGIES

LIKE = OrderedDict(w=np.zeros((2, 3), np.float32), n=np.array(4, np.int64))


def _x(c: int) -> OrderedDict:
    return OrderedDict(w=np.full((2, 3), 0.1 * (c + 1), np.float32), n=np.array(4 + c, np.int64))


def _key(c: int) -> str:
    return f"round-000003/client-{c:05d}-a1"


def _task(store: Store, clients: list[int], **over) -> SiteAggTask:
    return SiteAggTask(site="a", round=3, keys={c: _key(c) for c in clients}, store=store.url, params=LIKE,
                       wait_s=0.2, **over)


def test_the_site_aggregator_weighs_by_what_the_driver_accepted_and_leaves_out_bad_or_missing_updates(tmp_path):
    store = Store(str(tmp_path / "site"))
    for c in range(3):
        store.put(_x(c), _key(c))
    store.put({"w": np.full((3, 2), 1.0, np.float32), "n": np.array(1)}, _key(3))  # wrong shape
    # the driver accepted 0, 1, 3 and 4 (4 never wrote); 2 wrote but the driver rejected its answer
    p = aggregate_site(_task(store, [0, 1, 2, 3, 4]), {0: (10, 5), 1: (30, 5), 3: (5, 5), 4: (7, 5)})
    assert p.clients == [0, 1] and p.examples == 40
    np.testing.assert_allclose(p.params["w"], (10 * 0.1 + 30 * 0.2) / 40, rtol=1e-6)
    assert p.params["w"].dtype == np.float32  # one update's worth of bytes crosses to the driver
    assert p.params["n"] == pytest.approx((10 * 4 + 30 * 5) / 40)  # integer buffers: rounded by the driver, once
    assert "shape" in p.left_out[3] and p.left_out[4].startswith("late") and 2 not in p.left_out
    assert store.keys("round-000003") == [_key(2).split("/")[1]]  # what it read is gone; 2's was never read


def test_fednova_and_dp_weights_and_scaffold_control_at_the_site(tmp_path):
    store = Store(str(tmp_path / "site"))
    ctrl = {c: np.full((2, 3), float(c), np.float32) for c in (0, 1)}
    for c in (0, 1):
        store.put({**_x(c), CONTROL + "w": ctrl[c]}, _key(c))
    nova = aggregate_site(_task(store, [0, 1], weigh="steps", control=True), {0: (10, 2), 1: (30, 10)})
    w0, w1 = 10 / 2, 30 / 10  # n_i / tau_i
    np.testing.assert_allclose(nova.params["w"], (w0 * 0.1 + w1 * 0.2) / (w0 + w1), rtol=1e-6)
    np.testing.assert_allclose(nova.params[CONTROL + "w"], 0.5)  # the clients' mean control delta
    assert nova.examples == 40
    for c in (0, 1):
        store.put({**_x(c), CONTROL + "w": ctrl[c]}, _key(c))
    task = _task(store, [0, 1], weigh="equal", clip=0.1, control=True)
    dp = aggregate_site(task, {0: (10, 2), 1: (30, 10)})
    # each delta from the global model (the float tensor w) is clipped to norm 0.1, then equal weights
    want = np.mean([0.1 * (c + 1) * min(1.0, 0.1 / np.sqrt(6 * (0.1 * (c + 1)) ** 2)) for c in (0, 1)])
    np.testing.assert_allclose(dp.params["w"], want, rtol=1e-5)


def test_fednova_over_site_partials_equals_fednova_over_the_clients():
    """Every term of FedNova's step is a sum over clients: sums over sites give the same model."""
    rng = np.random.default_rng(0)
    g = OrderedDict(w=rng.normal(size=(4, 3)).astype(np.float32), n=np.array(7, np.int64))
    clients = [ClientUpdate(client=c, site="ab"[c % 2], round=1, num_examples=int(rng.integers(5, 50)),
                            params=OrderedDict(w=(g["w"] + rng.normal(size=(4, 3))).astype(np.float32),
                                               n=np.array(7 + c, np.int64)),
                            extras={"steps": int(rng.integers(1, 20))}) for c in range(6)]
    flat = STRATEGIES["fednova"]().aggregate(1, g, clients, [])
    drv = SimpleNamespace(strategy=STRATEGIES["fednova"](), privacy=None)
    sites = []
    for s in "ab":
        mine = [u for u in clients if u.site == s]
        w = np.array([u.num_examples / u.extras["steps"] for u in mine])
        mean = {k: sum(wi * np.asarray(u.params[k], np.float64) for wi, u in zip(w, mine, strict=True)) / w.sum()
                for k in g}
        p = SitePartial(s, 1, sum(u.num_examples for u in mine), [u.client for u in mine],
                        params={"w": mean["w"].astype(np.float32), "n": mean["n"]})
        sites.append(twotier.contribution(drv, p, mine))
    two = STRATEGIES["fednova"]().aggregate(1, g, sites, [])
    np.testing.assert_allclose(two["w"], flat["w"], atol=1e-6)
    assert two["n"] == flat["n"]


def test_scaffold_control_from_site_partials_equals_the_clients_own():
    g = OrderedDict(w=np.zeros(3, np.float32))
    ups = [ClientUpdate(client=c, site="ab"[c // 2], round=1, num_examples=10, params={"w": np.full(3, c, np.float32)},
                        extras={"scaffold_delta_c": {"w": np.full(3, c + 1.0, np.float32)}}) for c in range(4)]
    flat = STRATEGIES["scaffold"]()
    flat.bind(8, "/s")
    flat.aggregate(1, g, ups, [])
    drv = SimpleNamespace(strategy=STRATEGIES["scaffold"](), privacy=None)
    site = STRATEGIES["scaffold"]()
    site.bind(8, "/s")
    parts = [twotier.contribution(drv, SitePartial(s, 1, 20, [u.client for u in mine], params={
        "w": np.mean([u.params["w"] for u in mine], axis=0),
        CONTROL + "w": np.mean([u.extras["scaffold_delta_c"]["w"] for u in mine], axis=0)}), mine)
        for s in "ab" for mine in [[u for u in ups if u.site == s]]]
    site.aggregate(1, g, parts, [])
    np.testing.assert_allclose(site.c["w"], flat.c["w"])  # 4 of 8 clients: c moves by half their mean delta
    assert sorted(c for p in parts for c in p.extras["scaffold_clients"]) == [0, 1, 2, 3]


def test_central_dp_noise_on_site_means_gives_the_mean_flat_rounds_noise():
    from fedgrid.flow.privacy.dp import Privacy

    pv = Privacy.__new__(Privacy)
    pv.spec = SimpleNamespace(mode="central", noise_multiplier=2.0, clip=0.5)
    pv.rng = np.random.default_rng(1)
    g = {"w": np.zeros(200_000, np.float32)}
    ups = [ClientUpdate(client=-1, site=s, round=1, num_examples=k, params={"w": np.zeros(200_000, np.float32)},
                        extras={"clients": k}) for s, k in (("a", 3), ("b", 5))]
    pv.prepare(1, g, ups)
    mean = (3 * ups[0].params["w"].astype(np.float64) + 5 * ups[1].params["w"]) / 8
    assert np.std(mean) == pytest.approx(2.0 * 0.5 / 8, rel=0.02)  # z C / m, m = 8 clients
    assert [u.scale for u in ups] == [1.0, 1.0]  # weights stay the clients each site holds


def _drv(tmp_path, area=True) -> SimpleNamespace:
    return SimpleNamespace(tasks=SimpleNamespace(area=str(tmp_path) if area else None),
                           strategy=STRATEGIES["fedavg"](), privacy=None, secagg=None,
                           job=SimpleNamespace(round=SimpleNamespace(absent="drop")))


def _done(value) -> Future:
    f: Future = Future()
    f.set_exception(value) if isinstance(value, BaseException) else f.set_result(value)
    return f


def _env(c: int, site: str, n: int) -> ClientUpdate:
    return ClientUpdate(client=c, site=site, round=3, num_examples=n, params={})


def _round(aggs: dict[str, Future]) -> twotier.SiteRound:
    return twotier.SiteRound({}, {}, aggs)


def test_a_partial_that_does_not_add_up_costs_its_sites_clients_and_never_the_round(tmp_path):
    g = Gathered(updates=[_env(0, "a", 10), _env(1, "a", 30), _env(2, "b", 5), _env(3, "c", 7)])
    good = SitePartial("a", 3, 40, [0, 1], params={"w": np.ones((2, 3), np.float32), "n": np.array(4.0)})
    lying = SitePartial("b", 3, 5000, [2], params={"w": np.ones((2, 3), np.float32), "n": np.array(4.0)})
    aggs = {"a": _done(good), "b": _done(lying), "c": _done(RuntimeError("worker lost"))}
    contrib, rows = twotier.combine(_drv(tmp_path), 3, LIKE, g, _round(aggs), until=0.0)
    assert [(u.site, u.num_examples) for u in contrib] == [("a", 40)]
    assert [u.client for u in g.updates] == [0, 1]
    why = {f.client: f.reason for f in g.failures}
    assert "do not add up" in why[2] and why[3] == "site aggregator: RuntimeError: worker lost"
    assert [(r["site"], r["clients"], r["examples"]) for r in rows] == [("a", 2, 40), ("b", 0, 0), ("c", 0, 0)]
    assert rows[0]["bytes_up"] == sum(a.nbytes for a in good.params.values())


@pytest.mark.parametrize(("over", "key"), [
    ({"strategy": {"name": "median"}}, "strategy"),
    ({"strategy": {"name": "fedbuff"}}, "strategy"),
    ({"compression": {"up": "int8"}}, "compression.up"),
    ({"round": {"aggregate": "site", "late": "carry"}}, "round.late"),
])
def test_what_site_aggregation_cannot_do_is_refused_with_the_key(over, key, make_job, tmp_path):
    job = make_job(tmp_path / "r", round={"aggregate": "site", **over.pop("round", {})}, **over)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_job(job, "j.yaml")


@pytest.mark.parametrize("over", [{"strategy": {"name": "fednova"}},
                                  {"strategy": {"name": "scaffold"}, "train": {"epochs": 1, "momentum": 0}},
                                  {"privacy": {"clip": 1, "noise_multiplier": 1}},
                                  {"secagg": {"threshold": 0.5}}])
def test_sums_over_clients_are_taken_by_site_aggregation(over, make_job, tmp_path):
    assert parse_job(make_job(tmp_path / "r", round={"aggregate": "site"}, **over), "j.yaml").round.aggregate == "site"


def test_the_site_is_settled_when_its_clients_are_checked_or_at_its_deadline():
    s = twotier.Settle([0, 1, 2], time.time() + 60)
    s.accept(_env(0, "a", 10))
    s.done(0)
    s.done(1)  # failed: done, never accepted
    assert not s.future.done()
    s.accept(ClientUpdate(client=2, site="a", round=3, num_examples=7, params={}, extras={"steps": 4}))
    s.done(2)
    assert s.future.result(timeout=1) == {0: (10, 1), 2: (7, 4)}
    s.accept(_env(1, "a", 5))  # after it resolved: not in what its aggregator was given
    assert s.future.result() == {0: (10, 1), 2: (7, 4)}
    threads = threading.active_count()
    late = twotier.Settle([0], time.time() + 0.2)  # a client that never answers
    assert late.future.result(timeout=5) == {}
    end = time.time() + 5  # the timer's own thread ends just after it resolved: give it time on a busy machine
    while threading.active_count() > threads and time.time() < end:
        time.sleep(0.05)
    assert threading.active_count() <= threads  # no timer left sleeping behind


def test_a_site_whose_clients_all_failed_is_not_waited_for(tmp_path):
    """Its workers are gone: its aggregator may never run, and must not hold the round."""
    g = Gathered(updates=[_env(0, "a", 10)])
    good = SitePartial("a", 3, 10, [0], params={"w": np.ones((2, 3), np.float32), "n": np.array(4.0)})
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=twotier.combine(
        _drv(tmp_path, area=False), 3, LIKE, g, _round({"a": _done(good), "b": Future()}),
        until=time.time() + 600)), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive() and [u.site for u in out["r"][0]] == ["a"]


@pytest.mark.parametrize("left_out", [["not", "a", "dict"], {1: 12345}, {1: "x" * 10_000}, None])
def test_what_a_partial_says_of_the_clients_it_left_out_is_checked_before_it_is_recorded(left_out, tmp_path):
    """The reasons go into the rounds table: anything but a short string is replaced, never a crash."""
    g = Gathered(updates=[_env(0, "a", 10), _env(1, "a", 30)])
    p = SitePartial("a", 3, 10, [0], params={"w": np.ones((2, 3), np.float32), "n": np.array(4.0)})
    p.left_out = left_out
    contrib, _ = twotier.combine(_drv(tmp_path), 3, LIKE, g, _round({"a": _done(p)}), until=0.0)
    assert [u.client for u in g.updates] == [0] and len(contrib) == 1
    (f,) = g.failures
    assert f.client == 1 and isinstance(f.reason, str) and 0 < len(f.reason) <= 300
