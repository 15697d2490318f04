"""One rule set for updates (apps/checks.py): the driver's whole check, the fold's streaming check,
the site aggregator's check and the driver's check of a site's partial reject the same update for
the same reason."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest

from fedgrid.apps import checks
from fedgrid.apps.checks import InvalidUpdate, Rules
from fedgrid.apps.siteagg import CONTROL, SiteAggTask, SitePartial, aggregate_site
from fedgrid.apps.store import Store
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.rounds import fold, twotier, validate
from fedgrid.flow.strategies import STRATEGIES

LIKE = OrderedDict(w=np.zeros((2, 3), np.float32), b=np.zeros(3, np.float32), n=np.array(4, np.int64))


def _params(**over) -> OrderedDict:
    p = OrderedDict((k, (v + 0.1).astype(v.dtype) if v.dtype.kind == "f" else v.copy()) for k, v in LIKE.items())
    p.update(over)
    return p


BAD = {  # what is wrong -> the update's params
    "names": OrderedDict((k, v) for k, v in _params().items() if k != "b"),
    "order": OrderedDict(reversed(list(_params().items()))),
    "shape": _params(w=np.zeros((3, 2), np.float32)),
    "dtype": _params(b=np.zeros(3, np.float64)),
    "finite": _params(w=np.full((2, 3), np.nan, np.float32)),
    "norm": _params(w=np.full((2, 3), 10.0, np.float32)),
}
REASON = {"names": "names differ", "order": "out of order", "shape": "w has shape", "dtype": "b has dtype float64",
          "finite": "w has non-finite values", "norm": "update norm"}


def _reason(f) -> str:  # noqa: ANN001 - a callable that raises InvalidUpdate
    with pytest.raises(InvalidUpdate) as e:
        f()
    return str(e.value)


def _update(params: dict) -> ClientUpdate:
    return ClientUpdate(client=0, site="a", round=3, num_examples=10, params=dict(params))


@pytest.mark.parametrize("what", sorted(BAD))
def test_the_driver_the_fold_and_the_site_aggregator_reject_an_update_for_the_same_reason(what, tmp_path):
    params = BAD[what]
    whole = _reason(lambda: validate.check(_update(params), LIKE, max_norm=1.0))
    assert REASON[what] in whole
    store = Store(str(tmp_path / "store"))
    ref = store.put(params, f"round-000003/client-00000-{what}")
    streamed = _reason(lambda: fold.Spill(ref, Rules(LIKE, max_norm=1.0)))
    assert streamed == whole
    site = Store(str(tmp_path / "site"))
    site.put(params, "round-000003/client-00000-a1")
    p = aggregate_site(SiteAggTask(site="a", round=3, keys={0: "round-000003/client-00000-a1"}, store=site.url,
                                   params=LIKE, wait_s=0.2, max_norm=1.0), {0: (10, 1)})
    assert p.clients == [] and p.left_out[0] == f"{whole} (at site a's aggregator)"


@pytest.mark.parametrize("what", ["names", "order", "shape", "finite"])
def test_a_site_partial_is_held_to_the_same_rules(what, tmp_path):
    """A partial is a mean: any numeric dtype, no norm bound; names, shapes and values as an update's."""
    params = OrderedDict((k, np.asarray(v, np.float64)) for k, v in BAD[what].items())
    want = _reason(lambda: Rules(LIKE, partial=True).params(params))
    assert REASON[what] in want
    drv = SimpleNamespace(tasks=SimpleNamespace(area=str(tmp_path)), strategy=STRATEGIES["fedavg"](), privacy=None,
                          secagg=None, job=SimpleNamespace(round=SimpleNamespace(absent="drop")))
    p = SitePartial("a", 3, 10, [0], params=params)
    got = _reason(lambda: twotier._partial(drv, 3, "a", p, [ClientUpdate(0, "a", 3, 10, {})], LIKE, {}))
    assert got == want


def test_a_partial_takes_float64_means_of_integer_buffers_and_an_update_does_not():
    means = OrderedDict((k, np.asarray(v, np.float64)) for k, v in _params().items())
    Rules(LIKE, partial=True).params(means)
    with pytest.raises(InvalidUpdate, match="w has dtype float64, expected float32"):
        Rules(LIKE).params(means)


def test_a_tensor_must_be_an_array_and_a_numpy_scalar_is_a_0d_one():
    Rules(LIKE).params(_params(n=np.int64(4)))
    with pytest.raises(InvalidUpdate, match="n is int, expected an array"):
        Rules(LIKE).params(_params(n=4))
    with pytest.raises(InvalidUpdate, match="b is list, expected an array"):
        validate.check(_update(_params(b=[0.0, 0.0, 0.0])), LIKE)
    with pytest.raises(InvalidUpdate, match="params are str"):
        Rules(LIKE).params("not params")


def test_scaffold_control_deltas_fit_the_trainable_tensors_everywhere(tmp_path):
    ok = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}
    checks.control(ok, LIKE, complete=True)
    checks.control({"w": ok["w"]}, LIKE)  # a client's own may name fewer (frozen tensors have none)
    with pytest.raises(InvalidUpdate, match="lacks"):
        checks.control({"w": ok["w"]}, LIKE, complete=True)  # the site averages them all
    # a BatchNorm's statistics have no gradient, so no delta: a site still takes the update
    bn = {**LIKE, "bn.running_mean": np.zeros(3, np.float32), "bn.running_var": np.ones(3, np.float32)}
    checks.control(ok, bn, complete=True)
    for bad in ({"n": np.ones((), np.float32)}, {"w": np.ones(6, np.float32)}, {"w": np.full((2, 3), np.inf)},
                {"zz": ok["w"]}):
        with pytest.raises(InvalidUpdate, match="does not fit the model"):
            checks.control(bad, LIKE)
    u = _update(_params())
    u.extras["scaffold_delta_c"] = {"w": np.ones(6, np.float32)}
    whole = _reason(lambda: validate.check(u, LIKE))
    site = Store(str(tmp_path / "site"))
    site.put({**_params(), CONTROL + "w": np.ones(6, np.float32), CONTROL + "b": ok["b"]}, "k")
    p = aggregate_site(SiteAggTask(site="a", round=3, keys={0: "k"}, store=site.url, params=LIKE, wait_s=0.2,
                                   control=True), {0: (10, 1)})
    assert p.left_out[0] == f"{whole} (at site a's aggregator)"


def test_a_masked_vector_is_checked_alike_by_the_site_and_the_driver(tmp_path):
    from fedgrid.flow.privacy.secagg import SecureAggregation

    agg = SecureAggregation.__new__(SecureAggregation)
    agg.rounds = {3: {"size": 7}}
    good = {"masked": np.arange(7, dtype=np.uint64)}
    assert agg.check(3, ClientUpdate(0, "a", 3, 10, dict(good), codec="secagg")).wire_nbytes == 56
    for bad in ({"masked": np.arange(7, dtype=np.int64)}, {"masked": np.arange(6, dtype=np.uint64)},
                {**good, "x": np.zeros(1)}, {"masked": np.arange(7, dtype=np.uint64).reshape(7, 1)}):
        want = _reason(lambda bad=bad: checks.masked(bad, 7))
        assert _reason(lambda bad=bad: agg.check(3, ClientUpdate(0, "a", 3, 10, dict(bad), codec="secagg"))) == want
        site = Store(str(tmp_path / "site"))
        site.put(bad, "k")
        p = aggregate_site(SiteAggTask(site="a", round=3, keys={0: "k"}, store=site.url, params=LIKE, wait_s=0.2,
                                       masked=7), {0: (10, 1)})
        assert p.left_out[0] == f"{want} (at site a's aggregator)"
    with pytest.raises(InvalidUpdate, match="expected a masked update"):
        agg.check(3, ClientUpdate(0, "a", 3, 10, dict(good), codec="none"))


def test_the_envelope_checks_what_a_site_says_beside_its_params():
    limit = lambda: 4  # noqa: E731 - the budget the driver sent
    got = checks.envelope_extras({"steps": np.int64(3), "worker": "h" * 300, "cold": True, "other": 1}, limit)
    assert got == {"steps": 3, "worker": "h" * checks.LABEL_MAX, "cold": True, "other": 1}
    assert type(got["steps"]) is int
    for bad, match in (({"steps": 5}, r"extras.steps .* \[0, 4\]"), ({"worker": 7}, "extras.worker is int"),
                       ({"cold": 1}, "extras.cold"), ({"state": {"sha256": "x"}}, "extras.state")):
        with pytest.raises(InvalidUpdate, match=match):
            checks.envelope_extras(bad, limit)
