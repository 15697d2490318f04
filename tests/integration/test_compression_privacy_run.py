"""Update compression and client-level DP in real runs: the bytes recorded, the residuals kept at
the sites, epsilon and the budget, fresh DP noise, and an accountant that survives a lost table (the
codecs by hand: tests/unit/test_compression_privacy.py)."""

from __future__ import annotations

import shutil
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
    # each client's residual is in its state at its site, in the version the driver's checkpoint names
    from fedgrid.apps import state as codec
    from fedgrid.apps.sitestate import FOLDER
    from fedgrid.apps.store import Ref, fetch
    from fedgrid.flow.clients.profiles import state_of
    from fedgrid.flow.persist import checkpoint as ckpt

    profiles = ckpt.read_round(ckpt.round_path(job.run_dir(tmp_path), 2)).profiles
    area = next((job.run_dir(tmp_path) / "store").iterdir())
    for c in range(6):
        have, _ = state_of(profiles, c)
        kept = codec.decode(fetch(Ref(f"{area}/{FOLDER.format(client=c)}/{have['sha256']}", have["sha256"],
                                      have["nbytes"])))
        assert list(kept["residual"]) == list(_cnn_params()) and any(np.any(a) for a in kept["residual"].values())
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


def _final(run_dir, rnd: int) -> OrderedDict:
    from fedgrid.flow.persist import checkpoint as ckpt

    return ckpt.read_round(ckpt.round_path(run_dir, rnd)).params


@pytest.mark.parametrize("mode", ["central", "local"])
def test_dp_noise_is_not_a_function_of_the_seed_every_site_knows(mode, tmp_path, make_job) -> None:
    """Two runs of one job (one seed) add different noise: neither a site holding two consecutive
    global models (central) nor the driver (local) can regenerate the noise and subtract it."""
    spec = {"mode": mode, "clip": 1.0, "noise_multiplier": 0.5}
    runs = [run(parse_job(make_job(tmp_path / n, rounds=1, sites=LOCAL, privacy=spec)), quiet=True) for n in "ab"]
    a, b = (_final(r.run_dir, 1) for r in runs)
    assert not np.array_equal(a["8.weight"], b["8.weight"])
    assert runs[0].rows[0]["dp_sample_rate"] == 1.0  # local: the driver picks the sample, no amplification


def test_the_privacy_accountant_survives_a_lost_rounds_table(tmp_path, make_job) -> None:
    """A resumed run counts every round already released, from the checkpoint's own record, even
    when rounds.parquet is gone and the older round files were pruned."""
    from fedgrid.flow.persist import checkpoint as ckpt
    from fedgrid.flow.persist.table import rows_path
    from fedgrid.flow.privacy.dp import rdp_accountant

    spec = {"mode": "central", "clip": 1.0, "noise_multiplier": 0.5}
    over = dict(sites=LOCAL, privacy=spec, checkpoint={"dir": str(tmp_path / "run"), "keep": 1})
    first = run(parse_job(make_job(tmp_path / "run", rounds=3, **over)), quiet=True)
    shutil.rmtree(rows_path(first.run_dir))
    assert [r for r, _ in ckpt.round_files(first.run_dir)] == [0, 3]
    more = run(parse_job(make_job(tmp_path / "run", rounds=4, **over)), quiet=True)
    acc = rdp_accountant()()
    for _ in range(4):
        acc.step(noise_multiplier=0.5, sample_rate=1.0)
    assert more.rows[-1]["dp_epsilon"] == pytest.approx(acc.get_epsilon(1e-5))
