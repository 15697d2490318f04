"""Update compression and client-level DP in real runs: the bytes recorded, the residuals kept at
the sites, epsilon and the budget, and an exact resume (the codecs by hand: tests/unit/test_compression_privacy.py)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyarrow.parquet as pq
import pytest

from fedgrid.flow.config import load_job, parse_job
from fedgrid.flow.rounds.runner import run

LOCAL = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}]  # threads: fast, same path


def test_int8_up_and_fp16_down_cut_the_bytes_and_still_learn(tmp_path, write_job) -> None:
    job = load_job(write_job(rounds=3, sites=LOCAL, compression={"up": "int8", "down": "fp16"}))
    rows = run(job, quiet=True).rows
    plain = sum(a.nbytes for a in _cnn_params().values())
    for r in rows:
        ups = [u["bytes_up"] for u in r["updates"]]
        assert all(plain / b > 3.5 for b in ups), (plain, ups)  # int8 + a scale per tensor
        assert r["bytes_up"] == sum(ups) and r["bytes_down"] < 0.6 * plain * r["clients_selected"]
    assert rows[-1]["test_accuracy"] > 0.5


def test_topk_error_feedback_keeps_each_clients_residual_at_its_site(tmp_path, write_job) -> None:
    comp = {"up": "topk", "topk_fraction": 0.05, "dense_below": 0}  # every tensor sparse
    job = load_job(write_job(rounds=2, sites=LOCAL, compression=comp))
    rows = run(job, quiet=True).rows
    store = job.run_dir(tmp_path) / "store"
    residuals = sorted(p.name for p in store.rglob("client-*") if "residual" in str(p))
    assert residuals == [f"client-{c:05d}" for c in range(6)]
    assert all(u["bytes_up"] < 0.15 * sum(a.nbytes for a in _cnn_params().values()) for u in rows[-1]["updates"])


def test_central_dp_records_epsilon_and_stops_at_the_budget(tmp_path, write_job) -> None:
    spec = {"mode": "central", "clip": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_budget": 12}
    job = load_job(write_job(rounds=10, sites=LOCAL, privacy=spec))
    result = run(job, quiet=True)
    eps = [r["dp_epsilon"] for r in result.rows]
    assert eps == sorted(eps) and eps[-1] <= 12 and all(r["dp_noise"] == 1.0 for r in result.rows)
    assert result.stopped and result.rounds_done < 10
    from fedgrid.flow.privacy.dp import rdp_accountant

    acc = rdp_accountant()()
    for _ in eps:
        acc.step(noise_multiplier=1.0, sample_rate=1.0)
    assert eps[-1] == pytest.approx(acc.get_epsilon(1e-5))
    # resumed: the accountant is rebuilt from the rows, and the budget still holds
    again = run(load_job(write_job(rounds=10, sites=LOCAL, privacy=spec)), quiet=True)
    assert again.rounds_done == result.rounds_done and again.stopped
    table = pq.read_table(job.run_dir(tmp_path) / "rounds.parquet").to_pylist()
    assert [r["dp_epsilon"] for r in table] == eps


def _cnn_params() -> OrderedDict:
    from fedgrid.apps.models import build, get_params

    return get_params(build("cnn", (1, 8, 8), 10, {}))


def test_central_dp_resumes_to_exactly_the_uninterrupted_model(tmp_path, make_job) -> None:
    """The round's noise is drawn from (seed, round) in client order: a stop and resume adds the
    very noise an uninterrupted run adds."""
    from fedgrid.flow.persist import checkpoint as ckpt

    spec = {"mode": "central", "clip": 1.0, "noise_multiplier": 0.5}
    whole = run(parse_job(make_job(tmp_path / "whole", rounds=3, sites=LOCAL, privacy=spec)), quiet=True)
    run(parse_job(make_job(tmp_path / "split", rounds=2, sites=LOCAL, privacy=spec)), quiet=True)
    split = run(parse_job(make_job(tmp_path / "split", rounds=3, sites=LOCAL, privacy=spec)), quiet=True)
    a = ckpt.read_round(ckpt.round_path(whole.run_dir, 3)).params
    b = ckpt.read_round(ckpt.round_path(split.run_dir, 3)).params
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert whole.rows[-1]["dp_epsilon"] == split.rows[-1]["dp_epsilon"]
