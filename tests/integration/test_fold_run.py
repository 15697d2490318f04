"""A folded round (flow/rounds/fold.py) gives the model the old path (every update kept, then
weighted_mean) gives: the same small FedAvg job run both ways, inline and through the store."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt

THREADS = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 4}]


@pytest.mark.parametrize("mode", ["never", "always"])  # updates inline / by reference through the store
def test_folded_fedavg_equals_the_old_path(tmp_path, make_job, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    from fedgrid.flow.rounds import fold
    from fedgrid.flow.rounds.runner import run

    def job(name: str):  # noqa: ANN202
        return parse_job(make_job(tmp_path / name, rounds=2, model="mlp", train={"epochs": 1, "batch_size": 16},
                                  data={"dataset": "digits", "clients": 4}, sites=THREADS, store={"mode": mode},
                                  round={"min_clients": 4, "deadline_s": 120, "eval_every": 2}))

    finished, finish = [], fold.Fold.finish
    monkeypatch.setattr(fold.Fold, "finish", lambda self, ups: finished.append(len(ups)) or finish(self, ups))
    folded = run(job("folded"), quiet=True)
    assert finished == [4, 4]  # both rounds were folded
    used = []

    def old_path(drv) -> bool:  # noqa: ANN001
        used.append(drv)
        return False

    monkeypatch.setattr(fold, "applies", old_path)
    old = run(job("old"), quiet=True)
    assert used  # the second run took the old path
    a = ckpt.read_round(ckpt.round_path(folded.run_dir, 2))
    b = ckpt.read_round(ckpt.round_path(old.run_dir, 2))
    assert a.row["participants"] == b.row["participants"] == [0, 1, 2, 3]
    assert a.row["bytes_up"] == b.row["bytes_up"] > 0 and (a.row["bytes_by_ref"] > 0) == (mode == "always")
    assert [u["bytes_up"] for u in a.row["updates"]] == [u["bytes_up"] for u in b.row["updates"]]
    for k in a.params:
        assert a.params[k].dtype == b.params[k].dtype
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-5, atol=1e-5, err_msg=k)
