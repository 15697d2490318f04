"""Partitioners (fedgrid.apps.partition) and the client split of a built-in dataset."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrid.apps import datasets
from fedgrid.apps.partition import dirichlet, iid, natural, partition, shards
from fedgrid.flow.config import DataSpec, PartitionSpec

N = 2000
CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(123).integers(0, CLASSES, size=N)


@pytest.fixture(scope="module")
def groups() -> np.ndarray:
    # 40 "writers", unevenly sized, in shuffled order
    return np.random.default_rng(7).integers(0, 40, size=N) * 3 + 11


def _split(kind: str, labels: np.ndarray, groups: np.ndarray, clients: int = 10, seed: int = 0,
           **spec) -> list[np.ndarray]:
    return partition(labels, clients, {"kind": kind, **spec}, seed, groups if kind == "natural" else None)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(allidx, np.arange(n))


def _label_skew(parts: list[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
    """Mean over clients of (largest class share, entropy of the label distribution in nats)."""
    shares, ents = [], []
    for p in parts:
        counts = np.bincount(labels[p], minlength=CLASSES).astype(float)
        prob = counts / counts.sum()
        shares.append(prob.max())
        nz = prob[prob > 0]
        ents.append(float(-(nz * np.log(nz)).sum()))
    return float(np.mean(shares)), float(np.mean(ents))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


KINDS = ["iid", "dirichlet", "shards", "natural"]


# -- every kind ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_sample_exactly_once(kind, labels, groups):
    parts = _split(kind, labels, groups)
    assert len(parts) == 10
    _assert_exact_cover(parts, N)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_for_seed(kind, labels, groups):
    a = _split(kind, labels, groups, seed=5)
    b = _split(kind, labels, groups, seed=5)
    assert _same(a, b)
    c = _split(kind, labels, groups, seed=6)
    assert not _same(a, c)


@pytest.mark.parametrize("kind", KINDS)
def test_more_clients_than_samples_raises(kind):
    lab = np.arange(5) % 2
    grp = np.arange(5)
    with pytest.raises(ValueError):
        partition(lab, 6, {"kind": kind}, 0, grp if kind == "natural" else None)


def test_none_is_iid(labels):
    assert _same(partition(labels, 4, {"kind": "none"}, 3), partition(labels, 4, {"kind": "iid"}, 3))


def test_default_kind_is_iid(labels):
    assert _same(partition(labels, 4, {}, 3), iid(N, 4, 3))


def test_unknown_kind_raises(labels):
    with pytest.raises(ValueError, match="unknown partition kind"):
        partition(labels, 4, {"kind": "bogus"}, 0)


# -- iid ----------------------------------------------------------------------------------------


def test_iid_near_equal_sizes():
    parts = iid(1003, 10, 0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    _assert_exact_cover(parts, 1003)


# -- dirichlet ----------------------------------------------------------------------------------


def test_dirichlet_alpha_controls_skew(labels):
    skewed = _split("dirichlet", labels, None, alpha=0.1, seed=1)
    even = _split("dirichlet", labels, None, alpha=100.0, seed=1)
    share_lo, ent_lo = _label_skew(skewed, labels)
    share_hi, ent_hi = _label_skew(even, labels)
    # near-iid at alpha=100: ~uniform over 10 classes (max share ~0.1-0.15, entropy ~ln 10 = 2.30)
    assert share_hi < 0.2
    assert ent_hi > 2.1
    # alpha=0.1: clients dominated by a few classes
    assert share_lo > share_hi + 0.3
    assert ent_lo < ent_hi - 0.8


@pytest.mark.parametrize("min_size", [1, 30, 80])
def test_dirichlet_min_size_respected(labels, min_size):
    parts = dirichlet(labels, 10, 0.5, seed=2, min_size=min_size)
    assert min(len(p) for p in parts) >= min_size
    _assert_exact_cover(parts, N)


def test_dirichlet_min_size_via_partition_spec(labels):
    parts = partition(labels, 10, {"kind": "dirichlet", "alpha": 0.3, "min_size": 50}, 4)
    assert min(len(p) for p in parts) >= 50


def test_dirichlet_min_size_unreachable_raises(labels):
    # min_size is capped at n // clients; asking for an even split at tiny alpha in one draw must fail
    with pytest.raises(ValueError, match="min_size"):
        dirichlet(labels, 10, 0.01, seed=0, min_size=N // 10, max_tries=1)


@pytest.mark.parametrize("alpha", [0, 0.0, -1.0])
def test_dirichlet_alpha_not_positive_raises(labels, alpha):
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(labels, 10, alpha, seed=0)
    with pytest.raises(ValueError, match="alpha"):
        partition(labels, 10, {"kind": "dirichlet", "alpha": alpha}, 0)


# -- shards -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_few_labels_per_client_on_sorted_balanced_labels(k):
    # 10 classes x 60 samples, sorted: every one of the 10*k shards lies inside one class
    lab = np.repeat(np.arange(CLASSES), 60)
    parts = shards(lab, 10, k, seed=0)
    _assert_exact_cover(parts, len(lab))
    for p in parts:
        assert len(np.unique(lab[p])) <= k
        assert len(p) == 60 * CLASSES // (10 * k) * k


def test_shards_random_labels_bounded_labels_per_client(labels):
    # uneven classes: a shard may straddle one class boundary, so at most 2 labels per shard
    k = 2
    parts = shards(labels, 10, k, seed=3)
    _assert_exact_cover(parts, N)
    for p in parts:
        assert len(np.unique(labels[p])) <= 2 * k
    # and clearly fewer labels than an iid split gives
    iid_labels = np.mean([len(np.unique(labels[p])) for p in iid(N, 10, 3)])
    shard_labels = np.mean([len(np.unique(labels[p])) for p in parts])
    assert shard_labels < iid_labels - 3


def test_shards_via_partition_spec(labels):
    lab = np.sort(labels)
    parts = partition(lab, 5, {"kind": "shards", "shards_per_client": 2}, 0)
    assert all(len(np.unique(lab[p])) <= 2 * 2 for p in parts)
    _assert_exact_cover(parts, N)


# -- natural ------------------------------------------------------------------------------------


def test_natural_each_group_on_one_client(groups):
    parts = natural(groups, 7, seed=0)
    _assert_exact_cover(parts, N)
    owner = np.full(N, -1)
    for c, p in enumerate(parts):
        owner[p] = c
    for g in np.unique(groups):
        assert len(np.unique(owner[groups == g])) == 1, f"group {g} split over clients"
    assert all(len(p) > 0 for p in parts)


def test_natural_one_group_per_client_when_equal():
    grp = np.array(["b", "a", "c", "a", "c", "b", "b"])
    parts = natural(grp, 3, seed=1)
    _assert_exact_cover(parts, len(grp))
    assert sorted(len(set(grp[p])) for p in parts) == [1, 1, 1]


def test_natural_fewer_groups_than_clients_raises():
    grp = np.repeat(np.arange(3), 10)
    with pytest.raises(ValueError, match="distinct"):
        natural(grp, 4, seed=0)
    with pytest.raises(ValueError):
        partition(np.zeros(30, dtype=int), 4, {"kind": "natural"}, 0, grp)


def test_natural_without_groups_raises(labels):
    with pytest.raises(ValueError, match="group"):
        partition(labels, 4, {"kind": "natural"}, 0)


# -- a real dataset through client_arrays -------------------------------------------------------


def test_digits_client_arrays_cover_train_pool():
    data = DataSpec(dataset="digits", clients=5, partition=PartitionSpec(kind="dirichlet")).model_dump()
    seed = 0
    pool, groups = datasets.load_pool(data, seed)
    assert groups is None
    shards_ = [datasets.client_arrays(data, c, 5, seed) for c in range(5)]
    sizes = [len(a.y) for a in shards_]
    assert sum(sizes) == len(pool.y)
    assert min(sizes) >= data["partition"]["min_size"]
    for a in shards_:
        assert a.x.shape[1:] == (1, 8, 8)
        assert len(a.x) == len(a.y)
        assert a.num_classes == 10
    # labels of the shards together are exactly the pool's labels
    np.testing.assert_array_equal(np.sort(np.concatenate([a.y for a in shards_])), np.sort(pool.y))
    test = datasets.load_test(data, seed)
    assert test is not None
    assert len(test.y) == round(1797 * data["test_fraction"])
    # train and test are disjoint halves of the 1797 digits: no overlap in size
    assert sum(sizes) + len(test.y) == 1797
