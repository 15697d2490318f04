"""Secure aggregation in real runs: it matches plain aggregation with a client that drops after
sharing its keys (the protocol's pieces: tests/unit/test_secagg.py)."""

from __future__ import annotations

import numpy as np

from fedgrid.flow.config import load_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.rounds.runner import run


def test_secure_aggregation_matches_plain_aggregation_with_a_dropped_client(tmp_path, make_job) -> None:
    """Round 1: client 2 shares its keys, then fails before its masked update goes out (its
    pairwise masks are removed with its secret key rebuilt from the others' shares). Round 2:
    everyone answers. Both runs end at the same model within 1e-5 (FedAdam: the unmasked mean
    goes through a server optimiser exactly as the plain one does)."""
    import yaml

    out = {}
    local = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}]
    htex = [{"name": "a", "executor": {"kind": "htex", "workers": 2}, "clients": 6}]  # secrets in worker processes
    for name, extra in (("plain", {"sites": local}), ("secure", {"sites": htex, "secagg": {"threshold": 0.5}})):
        job = make_job(tmp_path / name, rounds=2, strategy="fedadam", faults=[{"clients": [2], "raise_at": [1]}],
                       model="mlp", train={"epochs": 1, "batch_size": 32, "lr": 0.05}, **extra)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        out[name] = run(load_job(path), quiet=True)
    for r in (1, 2):
        a = ckpt.read_round(ckpt.round_path(out["plain"].run_dir, r)).params
        b = ckpt.read_round(ckpt.round_path(out["secure"].run_dir, r)).params
        assert max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a) < 1e-5
    rows = out["secure"].rows
    assert rows[0]["clients_ok"] == 5 and rows[0]["failures"][0]["client"] == 2
    assert rows[1]["clients_ok"] == 6
    # what went over the wire: a masked vector of 8-byte ring words per parameter, never params
    n_float = sum(a.size for a in ckpt.read_round(ckpt.round_path(out["secure"].run_dir, 1)).params.values()
                  if a.dtype.kind == "f")
    assert all(u["bytes_up"] == 8 * (n_float + 1) for u in rows[1]["updates"])
