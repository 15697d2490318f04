"""Two-tier aggregation's halves without executors: the site's aggregator on a real store, the
driver's check of a site's partial, and what the job file refuses."""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest

from fedgrid.apps.siteagg import EXAMPLES, SiteAggTask, SitePartial, aggregate_site
from fedgrid.apps.store import Store
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.config import ConfigError, parse_job
from fedgrid.flow.rounds import twotier
from fedgrid.flow.rounds.gather import Gathered

LIKE = OrderedDict(w=np.zeros((2, 3), np.float32), n=np.array(4, np.int64))


def _x(c: int) -> OrderedDict:
    return OrderedDict(w=np.full((2, 3), 0.1 * (c + 1), np.float32), n=np.array(4 + c, np.int64))


def _task(store: Store, clients: list[int], **over) -> SiteAggTask:
    return SiteAggTask(site="a", round=3, keys={c: f"round-000003/client-{c:05d}-a1" for c in clients},
                       store=store.url, params=LIKE, max_examples={c: 100 for c in clients}, wait_s=0.2, **over)


def test_the_site_aggregator_weighs_its_clients_by_examples_and_leaves_out_bad_or_missing_ones(tmp_path):
    store = Store(str(tmp_path / "site"))
    for c, n in ((0, 10), (1, 30)):
        store.put({**_x(c), EXAMPLES: np.array(n, np.int64)}, f"round-000003/client-{c:05d}-a1")
    store.put({**_x(2), EXAMPLES: np.array(10**9, np.int64)}, "round-000003/client-00002-a1")  # claims too much
    store.put({"w": np.full((3, 2), 1.0, np.float32), "n": np.array(1), EXAMPLES: np.array(5)},
              "round-000003/client-00003-a1")  # wrong shape
    p = aggregate_site(_task(store, [0, 1, 2, 3, 4]))  # client 4 never wrote
    assert p.clients == [0, 1] and p.examples == 40
    np.testing.assert_allclose(p.params["w"], (10 * 0.1 + 30 * 0.2) / 40, rtol=1e-6)
    assert p.params["w"].dtype == np.float32  # one update's worth of bytes crosses to the driver
    assert p.params["n"] == pytest.approx((10 * 4 + 30 * 5) / 40)  # integer buffers: rounded by the driver, once
    assert "num_examples" in p.left_out[2] and "shape" in p.left_out[3] and p.left_out[4].startswith("late")
    assert not store.keys("round-000003")  # what it read is gone from the site's store


def _drv(tmp_path) -> SimpleNamespace:
    return SimpleNamespace(tasks=SimpleNamespace(area=str(tmp_path)))


def _done(value) -> Future:
    f: Future = Future()
    f.set_exception(value) if isinstance(value, BaseException) else f.set_result(value)
    return f


def _env(c: int, site: str, n: int) -> ClientUpdate:
    return ClientUpdate(client=c, site=site, round=3, num_examples=n, params={})


def test_a_partial_that_does_not_add_up_costs_its_sites_clients_and_never_the_round(tmp_path):
    g = Gathered(updates=[_env(0, "a", 10), _env(1, "a", 30), _env(2, "b", 5), _env(3, "c", 7)])
    good = SitePartial("a", 3, 40, [0, 1], params={"w": np.ones((2, 3), np.float32), "n": np.array(4.0)})
    lying = SitePartial("b", 3, 5000, [2], params={"w": np.ones((2, 3), np.float32), "n": np.array(4.0)})
    aggs = {"a": _done(good), "b": _done(lying), "c": _done(RuntimeError("worker lost"))}
    contrib, rows = twotier.combine(_drv(tmp_path), 3, LIKE, g, aggs, until=0.0)
    assert [(u.site, u.num_examples) for u in contrib] == [("a", 40)]
    assert [u.client for u in g.updates] == [0, 1]
    why = {f.client: f.reason for f in g.failures}
    assert "do not add up" in why[2] and why[3] == "site aggregator: RuntimeError: worker lost"
    assert [(r["site"], r["clients"], r["examples"]) for r in rows] == [("a", 2, 40), ("b", 0, 0), ("c", 0, 0)]
    assert rows[0]["bytes_up"] == sum(a.nbytes for a in good.params.values())


@pytest.mark.parametrize(("over", "key"), [
    ({"strategy": {"name": "median"}}, "strategy"),
    ({"privacy": {"clip": 1, "noise_multiplier": 1}}, "privacy"),
    ({"compression": {"up": "int8"}}, "compression.up"),
    ({"round": {"aggregate": "site", "late": "carry"}}, "round.late"),
])
def test_what_site_aggregation_cannot_do_is_refused_with_the_key(over, key, make_job, tmp_path):
    job = make_job(tmp_path / "r", round={"aggregate": "site", **over.pop("round", {})}, **over)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_job(job, "j.yaml")


def test_the_site_is_settled_when_its_clients_are_done_or_at_its_deadline():
    import threading
    import time

    a, b = Future(), Future()
    settled = twotier._settle([a, b], time.time() + 60)
    a.set_result(1)
    assert not settled.done()
    b.set_exception(ValueError("a failed client counts as done"))
    assert settled.done()
    threads = threading.active_count()
    late = twotier._settle([Future()], time.time() + 0.2)  # a client that never answers
    assert late.result(timeout=5) is True
    time.sleep(0.1)
    assert threading.active_count() <= threads  # no timer left sleeping behind


def test_a_site_whose_clients_all_failed_is_not_waited_for():
    """Its workers are gone: its aggregator may never run, and must not hold the round."""
    import threading
    import time

    g = Gathered(updates=[_env(0, "a", 10)])
    good = SitePartial("a", 3, 10, [0], params={"w": np.ones((2, 3), np.float32), "n": np.array(4.0)})
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=twotier.combine(
        SimpleNamespace(tasks=SimpleNamespace(area=None)), 3, LIKE, g, {"a": _done(good), "b": Future()},
        until=time.time() + 600)), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive() and [u.site for u in out["r"][0]] == ["a"]
