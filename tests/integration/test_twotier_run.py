"""Two-tier aggregation (round.aggregate: site) in real runs: one aggregation app per site on the
site's own executor; the global model equals flat aggregation's, and only one partial per site
reaches the driver."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.rounds.runner import run

# The aggregation app is a task of each site's own executor: here two thread sites (the whole
# round's DAG, cheaply); as a task of an endpoint's worker processes: test_globus_compute; on
# HTEX sites at scale: bench/twotier.py. Flat and site runs train the same clients the same way,
# so the executor kind cannot change the model: the FedAdam case runs its site half on two HTEX
# sites (worker processes: the aggregation app, the site store and the partial cross processes).
SITES = [{"name": n, "executor": {"kind": "local", "workers": 2}, "clients": 3} for n in "ab"]
HTEX = [{"name": n, "executor": {"kind": "htex", "workers": 1}, "clients": 3} for n in "ab"]


# FedAdam: a server optimiser on the mean; FedNova and SCAFFOLD: partial sums of their own terms
# (steps differ per client: the shards differ); secure aggregation: masked within each site, the
# masked sums unmasked at the driver (fixed point: 2^-frac_bits per value, so a looser bound)
CASES = {"fedadam": ({"name": "fedadam"}, {}, 1e-6), "fednova": ({"name": "fednova"}, {}, 1e-6),
         "scaffold": ({"name": "scaffold"}, {"momentum": 0}, 1e-6),
         # BatchNorm: its statistics get no control delta, and the site still aggregates its clients
         "scaffold-bn": ({"name": "scaffold"}, {"momentum": 0}, 1e-6),
         "secagg": ({"name": "fedavgm"}, {}, 1e-4)}


@pytest.mark.parametrize("case", list(CASES))
def test_site_aggregation_gives_the_flat_model_and_one_partial_per_site(case, tmp_path, make_job):
    strategy, train, atol = CASES[case]
    out = {}
    for mode in ("flat", "site"):
        more = {"secagg": {"threshold": 0.5}} if case == "secagg" and mode == "site" else {}
        sites = HTEX if case == "fedadam" and mode == "site" else SITES
        model = {"name": "cnn", "kwargs": {"norm": "batch"}} if case == "scaffold-bn" else "mlp"
        job = parse_job(make_job(tmp_path / mode, rounds=2, model=model, sites=sites, strategy=strategy,
                                 train={"epochs": 1, "batch_size": 32, "lr": 0.05, **train},
                                 round={"min_clients": 4, "deadline_s": 120, "aggregate": mode}, **more))
        res = run(job, quiet=True)
        out[mode] = (res.rows, ckpt.read_round(ckpt.round_path(job.run_dir(tmp_path), 2)).params)
    (flat_rows, flat), (site_rows, site) = out["flat"], out["site"]
    for k in flat:
        np.testing.assert_allclose(site[k], flat[k], atol=atol, rtol=0)
    assert [r["clients_ok"] for r in site_rows] == [r["clients_ok"] for r in flat_rows] == [6, 6]
    for r in site_rows:  # each client's row as in flat rounds, its bytes kept inside its site
        assert sorted(u["client"] for u in r["updates"]) == list(range(6))
        assert all(u["bytes_up"] == 0 for u in r["updates"]) and r["bytes_in_sites"] > 0
        per_update = r["bytes_in_sites"] / 6
        assert r["bytes_up"] <= 2 * per_update  # two partials (one update's worth each) instead of six updates
        assert [(s["site"], s["clients"]) for s in r["site_partials"]] == [("a", 3), ("b", 3)]


def test_central_dp_with_site_aggregation_clips_at_the_sites_and_accounts_at_the_driver(tmp_path, make_job):
    """The noise is random (OS entropy), so this run is checked for what it records: every client
    in a site partial of equal weights, and the accountant's epsilon growing round by round."""
    job = parse_job(make_job(tmp_path / "dp", rounds=2, model="mlp", sites=SITES,
                             train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                             privacy={"clip": 0.5, "noise_multiplier": 0.5},
                             round={"min_clients": 4, "deadline_s": 120, "aggregate": "site"}))
    rows = run(job, quiet=True).rows
    assert [r["clients_ok"] for r in rows] == [6, 6]
    assert [(s["site"], s["clients"]) for s in rows[-1]["site_partials"]] == [("a", 3), ("b", 3)]
    assert 0 < rows[0]["dp_epsilon"] < rows[1]["dp_epsilon"]
