"""Update compression (fp16, int8, top-k with error feedback, fp16 down) and client-level DP:
the codecs and the clipping against hand numbers, and what the config refuses (real runs that
record bytes and epsilon: tests/integration/test_compression_privacy_run.py)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from fedgrid.apps import codec
from fedgrid.apps.privacy import clip_and_noise, delta_norm
from fedgrid.flow.config import parse_job


def _model(seed: int = 0) -> OrderedDict:
    rng = np.random.default_rng(seed)
    return OrderedDict(w=rng.normal(size=(64, 32)).astype(np.float32), b=rng.normal(size=32).astype(np.float32),
                       n=np.array(7, np.int64))


def test_codecs_round_trip_within_their_precision() -> None:
    g = _model(0)
    x = OrderedDict((k, (v + 0.01 * _model(1)[k]).astype(v.dtype) if v.dtype != np.int64 else np.array(9))
                    for k, v in g.items())
    dense = sum(a.nbytes for a in x.values())
    for name, tol, ratio in (("fp32", 1e-7, 1.0), ("fp16", 2e-5, 1.9), ("int8", 0.0003, 3.9)):
        payload, left = codec.encode(x, g, name, seed=1)
        assert left == {}
        back = codec.decode(payload, g, name)
        assert back["n"] == 9  # integer buffers travel as they are
        assert max(float(np.abs(back[k] - x[k]).max()) for k in ("w", "b")) <= tol, name
        assert dense / codec.nbytes(payload) >= ratio, name
    # int8 rounding is stochastic and unbiased: averaged over many clients the error shrinks
    means = np.mean([codec.decode(codec.encode(x, g, "int8", seed=s)[0], g, "int8")["w"] for s in range(200)], axis=0)
    assert float(np.abs(means - x["w"]).max()) < 0.2 * float(np.abs(codec.decode(
        codec.encode(x, g, "int8", seed=0)[0], g, "int8")["w"] - x["w"]).max())


def test_topk_sends_the_largest_and_keeps_the_rest_for_next_round() -> None:
    g = OrderedDict(w=np.zeros(10, np.float32))
    x = OrderedDict(w=np.array([0.1, -5, 0.2, 3, 0, 0, 0.05, 0, 0, -0.3], np.float32))
    payload, left = codec.encode(x, g, "topk", topk_fraction=0.2, residual={})
    assert payload["w/idx"].tolist() == [1, 3] and payload["w/val"].tolist() == [-5, 3]
    np.testing.assert_allclose(left["w"], [0.1, 0, 0.2, 0, 0, 0, 0.05, 0, 0, -0.3])
    # next round the residual joins the new delta: nothing is lost, only delayed
    x2 = OrderedDict(w=np.array([0, 0, 0.25, 0, 0, 0, 0, 0, 0, -0.2], np.float32))
    p2, left2 = codec.encode(x2, g, "topk", topk_fraction=0.2, residual=left)
    assert p2["w/idx"].tolist() == [2, 9] and p2["w/val"].tolist() == pytest.approx([0.45, -0.5])
    sent = codec.decode(payload, g, "topk")["w"] + codec.decode(p2, g, "topk")["w"]
    np.testing.assert_allclose(sent + left2["w"], x["w"] + x2["w"], atol=1e-6)
    # a tensor under dense_below goes whole (as DGC does for biases), and leaves nothing behind
    small, left3 = codec.encode(x, g, "topk", topk_fraction=0.2, residual={}, dense_below=16)
    assert list(small) == ["w"] and left3 == {}
    np.testing.assert_allclose(codec.decode(small, g, "topk")["w"], x["w"])
    with pytest.raises(ValueError, match="index out of range"):
        codec.decode({"w/idx": np.array([12], np.int32), "w/val": np.ones(1, np.float32)}, g, "topk")


def test_clipping_bounds_each_clients_delta_and_noise_has_the_asked_std() -> None:
    g = OrderedDict(w=np.zeros(10000, np.float32), n=np.array(1))
    x = OrderedDict(w=np.full(10000, 0.1, np.float32), n=np.array(3))  # norm 10
    clipped, norm = clip_and_noise(x, g, clip=2.0, std=0.0, rng=np.random.default_rng(0))
    assert norm == pytest.approx(10.0, rel=1e-6) and delta_norm(clipped, g) == pytest.approx(2.0, rel=1e-6)
    assert clipped["n"] == 3
    small = OrderedDict(w=np.full(10000, 0.001, np.float32), n=np.array(3))  # norm 0.1: left alone
    assert delta_norm(clip_and_noise(small, g, 2.0, 0.0, np.random.default_rng(0))[0], g) == pytest.approx(0.1)
    noisy, _ = clip_and_noise(small, g, 2.0, 0.5, np.random.default_rng(0))
    assert float(np.std(noisy["w"] - small["w"])) == pytest.approx(0.5, rel=0.03)


def test_config_rejects_what_compression_and_privacy_cannot_do(make_job, tmp_path) -> None:
    from fedgrid.flow.config import ConfigError

    base = make_job(tmp_path / "r")
    with pytest.raises(ConfigError, match="round.late: .*use round.late: drop with compression"):
        parse_job({**base, "compression": {"up": "int8"}, "round": {"late": "carry"}}, "j.yaml")
    with pytest.raises(ConfigError, match="privacy: DP-FedAvg noises the clients' mean; strategy median"):
        parse_job({**base, "privacy": {"clip": 1, "noise_multiplier": 1}, "strategy": "median"}, "j.yaml")
    with pytest.raises(ConfigError, match="compression.up"):
        parse_job({**base, "compression": {"up": "int4"}}, "j.yaml")
    # the accountant's sampling amplification needs a uniform sample: deadline-aware selection is not one
    with pytest.raises(ConfigError, match="round.select: the accountant assumes clients sampled uniformly"):
        parse_job({**base, "privacy": {"clip": 1, "noise_multiplier": 1}, "round": {"select": "deadline"}}, "j.yaml")


def test_the_sampling_rate_is_the_clients_share_only_where_the_trusted_driver_samples(make_job, tmp_path) -> None:
    from fedgrid.flow.privacy.dp import sample_rate

    base = {**make_job(tmp_path / "r"), "round": {"fraction": 0.5, "min_clients": 1}}
    central = parse_job({**base, "privacy": {"mode": "central", "clip": 1, "noise_multiplier": 1}})
    local = parse_job({**base, "privacy": {"mode": "local", "clip": 1, "noise_multiplier": 1}})
    assert sample_rate(central) == 0.5 and sample_rate(local) == 1.0


def test_topk_error_feedback_lives_in_the_client_state_and_only_a_kept_version_counts() -> None:
    """The residual is part of the client's state (apps/sitestate.Kept): what one round leaves out is
    added in the next, and a task started from an older version uses that version's residual."""
    from fedgrid.apps.sitestate import Kept
    from fedgrid.apps.task import TrainTask
    from fedgrid.apps.train import compress

    task = TrainTask(client=3, site="a", round=1, clients=4, seed=0, data={}, code={}, train={})
    comp = {"codec": "topk", "topk_fraction": 0.25, "dense_below": 0, "feedback": True}
    start = {"w": np.zeros(4, np.float32)}
    kept = Kept()
    compress(task, comp, {"w": np.array([4, 3, 2, 1], np.float32)}, start, kept)
    np.testing.assert_array_equal(kept.residual["w"], [0, 3, 2, 1])  # the largest went, the rest kept
    older = Kept(residual=dict(kept.residual))
    compress(task, comp, {"w": np.zeros(4, np.float32)}, start, kept)  # the residual's largest goes next
    np.testing.assert_array_equal(kept.residual["w"], [0, 0, 2, 1])
    compress(task, comp, {"w": np.zeros(4, np.float32)}, start, older)  # a retry from the older version
    np.testing.assert_array_equal(older.residual["w"], [0, 0, 2, 1])
    off = Kept()
    compress(task, {**comp, "feedback": False}, {"w": np.array([4, 3, 2, 1], np.float32)}, start, off)
    assert off.residual == {}
