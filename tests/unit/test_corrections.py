"""What FedProx and SCAFFOLD change inside local training, on a real torch module and a real store."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrid.apps.corrections import Corrections
from fedgrid.apps.store import Ref, Store, fetch

torch = pytest.importorskip("torch")


def _model():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[2.0, -1.0]]))
    m.weight.grad = torch.zeros_like(m.weight)
    return m


def test_fedprox_adds_mu_times_the_distance_to_the_global_model() -> None:
    m = _model()
    fix = Corrections({"prox_mu": 0.5, "lr": 0.1}, m, {"weight": np.array([[1.0, 1.0]], np.float32)})
    fix.apply()
    np.testing.assert_allclose(m.weight.grad.numpy(), [[0.5, -1.0]])  # 0.5 * ([2, -1] - [1, 1])
    assert fix.finish(3) == {}


def test_scaffold_corrects_each_step_and_keeps_the_client_variate_in_the_store(tmp_path) -> None:
    store = Store(str(tmp_path))
    old = store.put({"weight": np.array([[0.25, 0.0]], np.float32)}, "state/scaffold/client-000007/round-000001")
    older = store.put({"weight": np.zeros((1, 2), np.float32)}, "state/scaffold/client-000007/round-000000")
    sc = {"c": {"weight": np.array([[1.0, 1.0]], np.float32)}, "store": str(tmp_path),
          "ci": {"uri": old.uri, "sha256": old.sha256, "nbytes": old.nbytes},
          "key": "state/scaffold/client-000007/round-000004", "keep": ["round-000001"]}
    m = _model()
    g = {"weight": np.array([[1.0, 0.0]], np.float32)}
    fix = Corrections({"lr": 0.5, "scaffold": sc}, m, g)
    fix.apply()
    np.testing.assert_allclose(m.weight.grad.numpy(), [[0.75, 1.0]])  # + c - c_i
    out = fix.finish(steps=2)  # y = [2, -1]: c_i+ = c_i - c + (G - y) / (2 * 0.5) = [-1.75, 0]
    new = fetch(Ref(**out["scaffold_ci"]))
    np.testing.assert_allclose(new["weight"], [[0.25 - 1 - 1, 0 - 1 + 1]])
    np.testing.assert_allclose(out["scaffold_delta_c"]["weight"], [[-2.0, 0.0]])
    assert not out["scaffold_reset"]
    # the variate it read is kept (the last checkpoint refers to it); older ones are gone
    assert store.keys("state/scaffold/client-000007") == ["round-000001", "round-000004"]
    assert older.uri.endswith("round-000000")


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_scaffold_option_two_recovers_a_constant_gradient_under_client_momentum(tmp_path, mu: float) -> None:
    """A client whose loss has a constant gradient g: after K steps of torch's momentum SGD the new
    variate must estimate g itself (c_i = 0, c = 0), whatever the momentum. Dividing by K * lr, as
    plain option II does, would report g / (1 - mu) for long runs: 10 g at mu 0.9."""
    from fedgrid.apps.corrections import path_length

    g = torch.tensor([[0.3, -0.2]])
    m = _model()
    start = {"weight": m.weight.detach().numpy().copy()}
    sc = {"c": {}, "store": str(tmp_path), "ci": None, "key": "state/scaffold/client-000001/round-000001"}
    fix = Corrections({"lr": 0.05, "momentum": mu, "scaffold": sc}, m, start)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=mu)
    for _ in range(7):
        opt.zero_grad(set_to_none=True)
        (m.weight * g).sum().backward()  # d/dw = g, every step
        fix.apply()
        opt.step()
    out = fix.finish(steps=7)
    np.testing.assert_allclose(out["scaffold_delta_c"]["weight"], g.numpy(), rtol=1e-4)
    assert path_length(7, 0.0) == 7 and path_length(2, mu) == pytest.approx(2 + mu)
