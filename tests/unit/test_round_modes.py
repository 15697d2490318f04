"""Round modes (flow/rounds/modes): which mode a run's settings choose, and each mode's side of
the contract (submit, accept, reads, the end of the gather, contributions) on small synthetic
updates, with stand-ins for the driver and its sites: no Parsl."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedgrid.apps.siteagg import MASKED, SitePartial
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.privacy.secagg import SecAggFailed
from fedgrid.flow.rounds import modes, validate
from fedgrid.flow.rounds.gather import Gathered, gather
from fedgrid.flow.rounds.validate import InvalidUpdate
from fedgrid.flow.strategies import STRATEGIES
from fedgrid.flow.strategies.base import weighted_mean

RND = 3
LIKE = OrderedDict(w=np.zeros((2, 3), np.float32), b=np.zeros(4, np.float32))


def _params(c: int) -> OrderedDict:
    return OrderedDict((k, np.full(v.shape, 0.1 * (c + 1), np.float32)) for k, v in LIKE.items())


def _update(c: int, n: int = 10, site: str = "a", params: dict | None = None) -> ClientUpdate:
    return ClientUpdate(client=c, site=site, round=RND, num_examples=n,
                        params=dict(_params(c)) if params is None else params, metrics={"loss": 0.5})


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_exception(value) if isinstance(value, BaseException) else f.set_result(value)
    return f


class Aggregators:
    """The sites' aggregation apps: each started with the future its site's clients settle."""

    def __init__(self) -> None:
        self.settled: dict[str, Future] = {}
        self.out: dict[str, Future] = {}

    def aggregate(self, site: str, task: Any, settled: Future) -> Future:
        self.settled[site], self.out[site] = settled, Future()
        return self.out[site]


def _drv(tmp_path, strategy: str = "fedavg", site_store: dict[str, str] | None = None, secagg: Any = None,
         privacy: Any = None, absent: str = "drop") -> SimpleNamespace:
    rs = SimpleNamespace(absent=absent, max_update_norm=None, deadline_s=30.0, site_deadline_fraction=0.5)
    tasks = SimpleNamespace(area=str(tmp_path / "store"), site_store=site_store or {},
                            update_key=lambda rnd, c, number: f"round-{rnd:06d}/client-{c:05d}-a{number}",
                            transfer=SimpleNamespace(ref_above={s: 1 << 20 for s in site_store or {}}))
    return SimpleNamespace(job=SimpleNamespace(round=rs, train=SimpleNamespace(epochs=1, batch_size=16), privacy=None),
                           strategy=STRATEGIES[strategy](), privacy=privacy, secagg=secagg, tasks=tasks,
                           runtime=Aggregators(), examples_limit=lambda c: validate.MAX_EXAMPLES)


def _ctx(drv: SimpleNamespace, instr: dict | None = None) -> modes.Context:
    return modes.Context(drv, RND, 1, LIKE, {s: LIKE for s in ("a", "b")}, instr if instr is not None else {})


def _send(sent: list[list[int]], site: str = "a"):  # noqa: ANN202 - the round's Send
    def send(clients: list[int]) -> dict[int, tuple[str, Future]]:
        sent.append(list(clients))
        return {c: (site, Future()) for c in clients}
    return send


@pytest.mark.parametrize(("over", "mode"), [
    ({}, modes.Folding),  # a mean-based strategy: folded as the updates arrive
    ({"strategy": "median"}, modes.Plain),  # needs every update
    ({"privacy": object()}, modes.Plain),  # DP re-weights or clips each update first
    ({"absent": "reuse"}, modes.Plain),  # the client memory keeps the updates
    ({"secagg": object()}, modes.Secure),
    ({"site_store": {"a": "/s/a"}}, modes.TwoTier),
    ({"site_store": {"a": "/s/a"}, "strategy": "fednova"}, modes.TwoTier),
    ({"site_store": {"a": "/s/a"}, "secagg": object()}, modes.TwoTier),  # secure aggregation per site
])
def test_the_factory_picks_the_mode_the_run_settings_call_for(over, mode, tmp_path):
    drv = _drv(tmp_path, **over)
    assert modes.kind(drv) is mode
    chosen = modes.choose(_ctx(drv))
    assert type(chosen) is mode and isinstance(chosen, modes.RoundMode)


def test_only_two_tier_accepts_without_reading_data(tmp_path):
    reads = {m.__name__: m.reads for m in (modes.Plain, modes.Folding, modes.Secure, modes.TwoTier)}
    assert reads == {"Plain": True, "Folding": True, "Secure": True, "TwoTier": False}


@pytest.mark.parametrize("reads", [True, False])
def test_the_gather_reads_a_by_reference_answer_on_a_thread_only_where_the_mode_reads(reads):
    threads = []

    def accept(client: int, site: str, answer: Any) -> ClientUpdate:
        threads.append(threading.current_thread().name)
        return _update(client)

    g = gather({0: ("a", _done(SimpleNamespace(ref="by reference")))}, 1, 10.0, accept=accept, reads=reads)
    assert [u.client for u in g.updates] == [0]
    assert threads[0].startswith("fedgrid-read-") == reads


def test_plain_keeps_each_checked_update_and_aggregates_them_with_their_stand_ins(tmp_path):
    mode = modes.Plain(_ctx(_drv(tmp_path, "median")))
    sent: list[list[int]] = []
    futs = mode.submit([0, 1, 2], _send(sent))
    assert sent == [[0, 1, 2]] and list(futs) == [0, 1, 2]
    ups = [mode.accept(c, "a", _update(c)) for c in (0, 1)]
    assert all(u.params for u in ups)
    with pytest.raises(InvalidUpdate, match="shape"):
        mode.accept(2, "a", _update(2, params={"w": np.zeros((3, 2), np.float32), "b": np.zeros(4, np.float32)}))
    with pytest.raises(InvalidUpdate):  # the answer of another client
        mode.accept(2, "a", _update(1))
    g = Gathered(updates=ups, failures=[Failure.of(2, "a", "rejected")])
    mode.gathered(g)
    mode.confirm(g)
    reused = [_update(5)]
    assert mode.problem is None and mode.site_rows is None
    assert mode.contributions(g, reused) == ups + reused
    assert [f.client for f in g.failures] == [2]


def test_plain_applies_the_strategys_own_check_with_what_it_sent_that_client(tmp_path):
    drv = _drv(tmp_path, "median")
    seen = []

    def check_answer(u: ClientUpdate, sent: dict) -> None:
        seen.append((u.client, sent))
        if sent.get("prox_mu"):
            raise ValueError("no proximal term reported")

    drv.strategy.check_answer = check_answer
    mode = modes.Plain(_ctx(drv, {1: {"prox_mu": 0.1}}))
    assert mode.accept(0, "a", _update(0)).client == 0
    with pytest.raises(ValueError, match="proximal"):
        mode.accept(1, "a", _update(1))
    assert seen == [(0, {}), (1, {"prox_mu": 0.1})]


def test_folding_gives_one_contribution_the_weighted_mean_of_what_it_accepted(tmp_path):
    mode = modes.Folding(_ctx(_drv(tmp_path)))
    mode.submit([2, 0, 1], _send([]))
    done: list[tuple[int, bool]] = []
    settled = mode.observe(lambda c, ok: done.append((c, ok)))
    kept = []
    for c, n in ((1, 30), (0, 10)):  # any arrival order: folded in client order
        kept.append(mode.accept(c, "a", _update(c, n)))
        settled(c, True)
    settled(2, False)  # a failed client lets the fold go past it
    assert done == [(1, True), (0, True), (2, False)]
    assert all(not u.params for u in kept)  # only the envelopes stay for the round's row
    g = Gathered(updates=sorted(kept, key=lambda u: u.client))
    mode.gathered(g)
    mode.confirm(g)
    [mean] = mode.contributions(g, [])
    want = weighted_mean([_update(0, 10), _update(1, 30)], LIKE)
    assert mean.num_examples == 40
    for k in LIKE:
        np.testing.assert_allclose(mean.params[k], want[k], rtol=1e-6)


class FakeSecAgg:
    """Secure aggregation's stages as the driver calls them, with what each returns chosen by the test."""

    def __init__(self, fail: str | None = None, lose: list[int] | None = None):
        self.fail, self.lose = fail, lose or []
        self.calls: list[str] = []

    def setup(self, rnd: int, clients: list[int], params: dict, by_site: bool = False):  # noqa: ANN201
        self.calls.append(f"setup by_site={by_site}")
        if self.fail == "setup":
            raise SecAggFailed("too few keys")
        masking = [c for c in clients if c not in self.lose]
        return masking, [Failure.of(c, "a", "secagg keys: lost") for c in self.lose], {c: {"step": "mask"}
                                                                                      for c in masking}

    def size(self, rnd: int) -> int:
        return 7

    def unmask_sites(self, rnd: int, sums: dict, params: dict, failures: list) -> tuple[list, dict]:
        if self.fail == "unmask":
            raise SecAggFailed("no site could be unmasked")
        return [ClientUpdate(client=-1, site=s, round=rnd, num_examples=20, params=dict(LIKE)) for s in sums], {}

    def check(self, rnd: int, u: ClientUpdate) -> ClientUpdate:
        self.calls.append(f"check {u.client}")
        return u

    def finish(self, rnd: int, updates: list, params: dict, failures: list) -> ClientUpdate:
        self.calls.append("finish")
        if self.fail == "finish":
            raise SecAggFailed("too few unmasked")
        return ClientUpdate(client=-1, site="secagg", round=rnd, num_examples=sum(u.num_examples for u in updates),
                            params=dict(LIKE))


def test_secure_masks_before_training_and_unmasks_the_sum_once_the_quorum_is_met(tmp_path):
    sa = FakeSecAgg(lose=[1])
    instr: dict = {0: {"prox_mu": 0.1}}
    mode = modes.Secure(_ctx(_drv(tmp_path, secagg=sa), instr))
    sent: list[list[int]] = []
    mode.submit([0, 1, 2], _send(sent))
    assert sent == [[0, 2]]  # the clients in the masking only
    assert instr == {0: {"prox_mu": 0.1, "secagg": {"step": "mask"}}, 2: {"secagg": {"step": "mask"}}}
    ups = [mode.accept(c, "a", _update(c)) for c in (0, 2)]
    g = Gathered(updates=ups, failures=[Failure.of(2, "a", "late")])
    mode.gathered(g)
    assert [f.client for f in g.failures] == [1, 2]  # the stage's failures first
    mode.confirm(g)
    assert mode.problem is None and sa.calls == ["setup by_site=False", "check 0", "check 2", "finish"]
    [secure] = mode.contributions(g, [])
    assert (secure.site, secure.num_examples) == ("secagg", 20)


@pytest.mark.parametrize("stage", ["setup", "finish"])
def test_a_secure_stage_that_fails_fails_the_attempt(stage, tmp_path):
    mode = modes.Secure(_ctx(_drv(tmp_path, secagg=FakeSecAgg(fail=stage))))
    sent: list[list[int]] = []
    mode.submit([0, 1], _send(sent))
    assert sent == [[]] if stage == "setup" else [[0, 1]]
    g = Gathered()
    mode.gathered(g)
    if stage == "finish":
        assert mode.problem is None
        mode.confirm(g)
    assert mode.problem == ("too few keys" if stage == "setup" else "too few unmasked")


def test_two_tier_checks_envelopes_only_and_aggregates_one_partial_per_site(tmp_path):
    drv = _drv(tmp_path, site_store={"a": str(tmp_path / "site-a")})
    mode = modes.TwoTier(_ctx(drv))
    mode.submit([0, 1, 2], _send([]))
    settled = mode.observe(lambda c, ok: None)
    u0 = mode.accept(0, "a", _update(0, 10, params={}))  # the params stay at the site
    u1 = mode.accept(1, "a", _update(1, 30, params={}))
    with pytest.raises(InvalidUpdate):  # the answer of another round
        mode.accept(2, "a", ClientUpdate(client=2, site="a", round=RND - 1, num_examples=5, params={}))
    for c, ok in ((0, True), (1, True), (2, False)):
        settled(c, ok)
    apps = drv.runtime
    assert apps.settled["a"].result(timeout=5) == {0: (10, 1), 1: (30, 1)}  # what the site weighs by
    mean = OrderedDict((k, np.full(v.shape, 0.25, np.float32)) for k, v in LIKE.items())
    apps.out["a"].set_result(SitePartial("a", RND, 40, [0, 1], params=mean))
    g = Gathered(updates=[u0, u1], failures=[Failure.of(2, "a", "rejected")])
    mode.gathered(g)
    mode.confirm(g)
    assert mode.problem is None
    assert [(r["site"], r["clients"], r["examples"]) for r in mode.site_rows or []] == [("a", 2, 40)]
    [contribution] = mode.contributions(g, [])  # fedavg: the sites' partials folded into one mean
    assert contribution.num_examples == 40
    np.testing.assert_allclose(contribution.params["w"], 0.25)


@pytest.mark.parametrize("fail", [None, "unmask"])
def test_two_tier_under_secure_aggregation_masks_and_unmasks_per_site(fail, tmp_path):
    sa = FakeSecAgg(fail=fail, lose=[2])
    drv = _drv(tmp_path, site_store={"a": str(tmp_path / "site-a")}, secagg=sa)
    mode = modes.TwoTier(_ctx(drv))
    sent: list[list[int]] = []
    mode.submit([0, 1, 2], _send(sent))
    assert sent == [[0, 1]] and sa.calls == ["setup by_site=True"]
    settled = mode.observe(lambda c, ok: None)
    ups = [mode.accept(c, "a", _update(c, 10, params={})) for c in (0, 1)]
    for c in (0, 1):
        settled(c, True)
    drv.runtime.out["a"].set_result(SitePartial("a", RND, 20, [0, 1], params={MASKED: np.zeros(7, np.uint64)}))
    g = Gathered(updates=ups)
    mode.gathered(g)
    assert g.failures[0].client == 2  # the masking's loss first
    if fail:  # the unmasking failed: every client of the round is a failure, no contribution
        assert g.updates == [] and [f.client for f in g.failures] == [2, -1, 0, 1]
        assert mode.contributions(g, []) == []
    else:
        assert [(u.site, u.num_examples) for u in mode.contributions(g, [])] == [("a", 20)]
    mode.confirm(g)
    assert "finish" not in sa.calls  # the sites' sums are unmasked with the partials, not after
