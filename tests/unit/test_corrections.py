"""What FedProx and SCAFFOLD change inside local training, on a real torch module and a real store."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrid.apps.corrections import Corrections
from fedgrid.apps.sitestate import Kept

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


def test_scaffold_corrects_each_step_and_keeps_the_client_variate_in_its_state() -> None:
    kept = Kept(scaffold={"weight": np.array([[0.25, 0.0]], np.float32)})
    sc = {"c": {"weight": np.array([[1.0, 1.0]], np.float32)}}
    m = _model()
    g = {"weight": np.array([[1.0, 0.0]], np.float32)}
    fix = Corrections({"lr": 0.5, "scaffold": sc}, m, g, kept)
    fix.apply()
    np.testing.assert_allclose(m.weight.grad.numpy(), [[0.75, 1.0]])  # + c - c_i
    out = fix.finish(steps=2)  # y = [2, -1]: c_i+ = c_i - c + (G - y) / (2 * 0.5) = [-1.75, 0]
    np.testing.assert_allclose(kept.scaffold["weight"], [[0.25 - 1 - 1, 0 - 1 + 1]])
    np.testing.assert_allclose(out["scaffold_delta_c"]["weight"], [[-2.0, 0.0]])
    assert set(out) == {"scaffold_delta_c"}  # the variate itself stays at the site
    fresh = Corrections({"lr": 0.5, "scaffold": sc}, _model(), g, Kept())  # a client with no variate yet
    np.testing.assert_allclose(fresh.ci["weight"], np.zeros((1, 2)))


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_scaffold_option_two_recovers_a_constant_gradient_under_client_momentum(tmp_path, mu: float) -> None:
    """A client whose loss has a constant gradient g: after K steps of torch's momentum SGD the new
    variate must estimate g itself (c_i = 0, c = 0), whatever the momentum. Dividing by K * lr, as
    plain option II does, would report g / (1 - mu) for long runs: 10 g at mu 0.9."""
    from fedgrid.apps.corrections import path_length

    g = torch.tensor([[0.3, -0.2]])
    m = _model()
    start = {"weight": m.weight.detach().numpy().copy()}
    fix = Corrections({"lr": 0.05, "momentum": mu, "scaffold": {"c": {}}}, m, start, Kept())
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=mu)
    for _ in range(7):
        opt.zero_grad(set_to_none=True)
        (m.weight * g).sum().backward()  # d/dw = g, every step
        fix.apply()
        opt.step()
    out = fix.finish(steps=7)
    np.testing.assert_allclose(out["scaffold_delta_c"]["weight"], g.numpy(), rtol=1e-4)
    assert path_length(7, 0.0) == 7 and path_length(2, mu) == pytest.approx(2 + mu)
