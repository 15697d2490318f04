"""The streaming fold (flow/rounds/fold.py): the same mean as weighted_mean, in any arrival order,
and nothing of a rejected update in it."""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps import store as store_mod
from fedgrid.apps.store import Reader, Ref, Store, StoreError
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.rounds import fold as fold_mod
from fedgrid.flow.rounds.fold import Fold
from fedgrid.flow.rounds.validate import InvalidUpdate
from fedgrid.flow.strategies.base import weighted_mean
from fedgrid.flow.strategies.fedavg import FedAvg

RND = 3


def _like() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return OrderedDict([("w", (0.1 * rng.standard_normal((300, 211))).astype(np.float32)),
                        ("b", (0.1 * rng.standard_normal(77)).astype(np.float32)),
                        ("d", rng.standard_normal((5, 3))),  # float64
                        ("count", np.array(40, dtype=np.int64)),  # a BatchNorm counter: rounded mean
                        ("empty", np.zeros((0, 4), np.float32))])


def _client(like: dict, c: int) -> OrderedDict[str, np.ndarray]:
    """A client's model: the global one plus a small, client-specific step."""
    rng = np.random.default_rng(100 + c)
    return OrderedDict((k, g + (0.01 * rng.standard_normal(g.shape)).astype(g.dtype) if g.dtype.kind == "f"
                        else g + c) for k, g in like.items())


def _update(c: int, params: dict, n: int, ref: Ref | None = None) -> ClientUpdate:
    return ClientUpdate(client=c, site="s", round=RND, num_examples=n, params={} if ref else dict(params), ref=ref,
                        metrics={"loss": 0.5})


def _fold(like: dict, answers: dict[int, ClientUpdate], order: list[int], area: str | None = None,
          max_norm: float | None = None, carried: list[ClientUpdate] = ()) -> tuple[ClientUpdate, list[int]]:
    """Run a Fold as a gather would: accept each answer in `order`, settle it; the fold's mean."""
    f = Fold(like, RND, list(answers))
    accepted = []
    for c in order:
        try:
            accepted.append(f.accept(answers[c], c, "s", RND, like, area, max_norm))
            f.settle(c, True)
        except (InvalidUpdate, StoreError):
            f.settle(c, False)
    got = f.finish(accepted + list(carried))
    assert all(not u.params for u in accepted)  # only envelopes stay
    return got, sorted(u.client for u in accepted)


def _same(a: dict, b: dict) -> None:
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _expected(like: dict, ups: list[ClientUpdate]) -> dict:
    return weighted_mean(ups, like)


def _check_close(like: dict, got: ClientUpdate, want: dict) -> None:
    new = FedAvg().aggregate(RND, like, [got], [])
    for k, g in like.items():
        assert new[k].dtype == g.dtype and new[k].shape == g.shape, k
        if g.dtype.kind == "f":
            np.testing.assert_allclose(new[k], want[k], rtol=1e-6, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(new[k], want[k], err_msg=k)


def test_inline_fold_matches_weighted_mean_with_carried_scale() -> None:
    like = _like()
    clients = {c: _client(like, c) for c in range(12)}
    ns = {c: 10 + 7 * c for c in clients}
    answers = {c: _update(c, p, ns[c]) for c, p in clients.items() if c < 10}
    late = [_update(c, clients[c], ns[c]) for c in (10, 11)]
    for u, s in zip(late, (0.5, 0.25), strict=True):
        u.scale, u.staleness = s, 1
    want = _expected(like, [_update(c, clients[c], ns[c]) for c in range(10)] + late)
    got, accepted = _fold(like, answers, list(answers), carried=late)
    assert accepted == list(range(10)) and got.num_examples == sum(ns.values())
    _check_close(like, got, want)
    assert all(not u.params for u in late)


def test_by_reference_same_bits_in_any_arrival_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "PIECE", 4096)  # many pieces per tensor, and tensors across pieces
    monkeypatch.setattr(fold_mod, "PIECE", 4096)
    like, st = _like(), Store(str(tmp_path / "store"))
    clients = {c: _client(like, c) for c in range(8)}
    refs = {c: st.put(p, f"round-000003/client-{c:05d}-a1") for c, p in clients.items()}
    want = _expected(like, [_update(c, p, 100 + c) for c, p in clients.items()])
    results = []
    for seed in (0, 1, 2):
        order = list(clients)
        random.Random(seed).shuffle(order)
        answers = {c: _update(c, clients[c], 100 + c, refs[c]) for c in clients}
        got, accepted = _fold(like, answers, order, area=str(tmp_path / "store"))
        assert accepted == list(clients)
        _check_close(like, got, want)
        results.append(got.params)
    _same(results[0], results[1])
    _same(results[0], results[2])


def _tamper(ref: Ref, at: int, value: bytes) -> None:
    with open(ref.uri, "r+b") as f:
        f.seek(at)
        f.write(value)


def test_rejected_updates_never_touch_the_accumulator(tmp_path: Path) -> None:
    like, area = _like(), str(tmp_path / "store")
    st = Store(area)
    good = {c: _client(like, c) for c in (0, 2, 4)}
    nan = _client(like, 1)
    nan["w"][-1, -1] = np.nan  # in the last piece: found only after everything before it was read
    far = _client(like, 3)
    far["b"] += 10.0  # beyond the norm bound
    answers = {c: _update(c, p, 50, st.put(p, f"round-000003/c{c}")) for c, p in good.items()}
    answers[1] = _update(1, nan, 50, st.put(nan, "round-000003/c1"))
    answers[3] = _update(3, far, 50, st.put(far, "round-000003/c3"))
    bad_sha = _client(like, 5)
    answers[5] = _update(5, bad_sha, 50, st.put(bad_sha, "round-000003/c5"))
    _tamper(answers[5].ref, answers[5].ref.nbytes - 200, b"\x01\x02")  # same size, other bytes
    short = _client(like, 6)
    r6 = st.put(short, "round-000003/c6")
    answers[6] = _update(6, short, 50, Ref(r6.uri, r6.sha256, r6.nbytes + 64))
    alone = {c: _update(c, p, 50, st.put(p, f"round-000003/g{c}")) for c, p in good.items()}
    only_good, _ = _fold(like, alone, sorted(alone), area=area, max_norm=5.0)
    got, accepted = _fold(like, answers, [1, 0, 5, 2, 3, 6, 4], area=area, max_norm=5.0)
    assert accepted == [0, 2, 4]
    _same(got.params, only_good.params)


def test_an_update_the_gather_gave_up_on_is_not_folded(tmp_path: Path) -> None:
    """A read that outlives the deadline: the client is settled as failed first, then its accept
    returns (on its own thread); the fold drops it unread."""
    like, area = _like(), str(tmp_path / "store")
    st = Store(area)
    ps = {c: _client(like, c) for c in range(3)}
    f = Fold(like, RND, [0, 1, 2])
    ok = [f.accept(_update(0, ps[0], 9, st.put(ps[0], "round-000003/a")), 0, "s", RND, like, area)]
    f.settle(0, True)
    f.settle(1, False)  # timed out ...
    f.accept(_update(1, ps[1], 9, st.put(ps[1], "round-000003/b")), 1, "s", RND, like, area)  # ... then read
    ok.append(f.accept(_update(2, ps[2], 9), 2, "s", RND, like, area))
    f.settle(2, True)
    assert f.held == {} and f.folded == [0, 2]
    _check_close(like, f.finish(ok), _expected(like, [_update(c, ps[c], 9) for c in (0, 2)]))


def test_reader_pieces_and_wrong_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "PIECE", 1000)
    like = _like()
    ref = Store(str(tmp_path)).put(like, "k")
    with Reader(ref) as r:
        assert [e.name for e in r.entries] == list(like)
        got: dict[str, list] = {}
        for e, start, x in r.arrays():
            assert start == sum(len(p) for p in got.get(e.name, []))
            got.setdefault(e.name, []).append(x.copy())
    for k, g in like.items():
        np.testing.assert_array_equal(np.concatenate(got[k]).reshape(g.shape) if got.get(k) else g, g)
    _tamper(ref, ref.nbytes - 100, b"\xff")
    with pytest.raises(StoreError, match="sha256"), Reader(ref) as r:
        for _ in r.arrays():
            pass
    with pytest.raises(StoreError, match="regular file"):
        Reader(Ref(ref.uri, ref.sha256, ref.nbytes - 1))
