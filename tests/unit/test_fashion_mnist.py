"""Fashion-MNIST from the original idx files (Debian's dataset-fashion-mnist), read at the site."""

from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps import datasets

ROOT = Path(datasets.FMNIST_DEFAULT_ROOT)
pytestmark = pytest.mark.skipif(datasets.fashion_mnist_missing(str(ROOT)) is not None,
                                reason="Fashion-MNIST idx files not installed (apt-get install dataset-fashion-mnist)")


def test_fashion_mnist_loads_and_partitions(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGRID_CACHE", str(tmp_path))
    test = datasets.load_test({"dataset": "fashion_mnist"}, 0)
    assert test.x.shape == (10000, 1, 28, 28) and test.x.dtype == np.float32
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert abs(float(np.mean(test.x))) < 0.1  # normalised with the training split's statistics
    data = {"dataset": "fashion_mnist", "partition": {"kind": "dirichlet", "alpha": 0.5}}
    parts = [datasets.client_arrays(data, c, 20, 0) for c in range(20)]
    assert sum(len(p.y) for p in parts) == 60000
    assert len(list(tmp_path.glob("fmnist-*.npy"))) == 4  # decoded once, memory-mapped after


def test_digits_come_from_the_cache_once_decoded(tmp_path, monkeypatch):
    """A new worker reads two .npy files instead of importing scikit-learn; the arrays are the same."""
    from sklearn.datasets import load_digits

    from fedgrid.apps import datasets

    monkeypatch.setenv("FEDGRID_CACHE", str(tmp_path))
    first = datasets._digits_arrays()
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.npy")) == ["digits", "digits"]
    again = datasets._digits_arrays()
    d = load_digits()
    for x, y in (first, again):
        np.testing.assert_array_equal(x[:, 0], d.images.astype(np.float32) / 16.0)
        np.testing.assert_array_equal(y, d.target)
