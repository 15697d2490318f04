"""FedAvg against a hand computation."""

from collections import OrderedDict

import numpy as np
import pytest

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.strategies.fedavg import FedAvg


def _u(client, n, w, b):
    return ClientUpdate(client=client, site="s", round=1, num_examples=n,
                        params=OrderedDict(w=np.array(w, dtype=np.float32), b=np.array(b, dtype=np.int64)))


def test_fedavg_is_example_weighted_mean():
    g = OrderedDict(w=np.zeros(2, np.float32), b=np.zeros(1, np.int64))
    ups = [_u(0, 10, [1.0, 2.0], [1]), _u(1, 30, [3.0, -2.0], [5])]
    out = FedAvg().aggregate(1, g, ups, [])
    # by hand: w = (10*[1,2] + 30*[3,-2]) / 40 = [2.5, -1.0]; b = (10*1 + 30*5)/40 = 4
    np.testing.assert_allclose(out["w"], [2.5, -1.0])
    assert out["w"].dtype == np.float32
    assert out["b"].tolist() == [4] and out["b"].dtype == np.int64
    assert list(out) == ["w", "b"]


def test_fedavg_ignores_order_and_rejects_empty():
    g = OrderedDict(w=np.zeros(2, np.float32), b=np.zeros(1, np.int64))
    ups = [_u(0, 1, [1.0, 0.0], [0]), _u(1, 3, [0.0, 1.0], [0]), _u(2, 4, [2.0, 2.0], [0])]
    s = FedAvg()
    a = s.aggregate(1, g, ups, [])
    b = s.aggregate(1, g, ups[::-1], [])
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)
    np.testing.assert_allclose(a["w"], [(1 + 8) / 8, (3 + 8) / 8], rtol=1e-6)
    with pytest.raises(ValueError):
        s.aggregate(1, g, [], [])
