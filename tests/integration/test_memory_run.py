"""round.absent: reuse (MIFA) in a real run: stand-ins are recorded, and a resumed run reaches the same model."""

from __future__ import annotations

import numpy as np

from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt


def test_reuse_records_stand_ins_and_resumes_to_the_same_model(tmp_path, make_job) -> None:
    from fedgrid.flow.rounds.runner import run

    # threads: the memory of updates is the driver's, whatever the executor kind
    sites = [{"name": "a", "executor": {"kind": "local", "workers": 3}, "clients": 3},
             {"name": "b", "executor": {"kind": "local", "workers": 3}, "clients": 3}]

    def job(d, rounds):
        return parse_job(make_job(d, rounds=rounds, model="mlp", sites=sites,
                                  train={"epochs": 1, "batch_size": 16, "lr": 0.05},
                                  round={"min_clients": 2, "absent": "reuse", "max_staleness": 3},
                                  faults=[{"clients": [3, 4, 5], "fail_p": 0.6}]))

    whole = run(job(tmp_path / "whole", 5), quiet=True)
    reused = [(r["round"], x["client"], x["staleness"]) for r in whole.rows for x in r["reused"]]
    assert reused, "some failed client had answered before and should have stood in"
    for rnd, client, stale in reused:
        row = whole.rows[rnd - 1]
        assert client in {f["client"] for f in row["failures"]} and 1 <= stale <= 3
    run(job(tmp_path / "split", 3), quiet=True)
    split = run(job(tmp_path / "split", 5), quiet=True)
    assert split.resumed_from == 3
    a = ckpt.read_round(ckpt.round_path(tmp_path / "whole", 5))
    b = ckpt.read_round(ckpt.round_path(tmp_path / "split", 5))
    assert a.memory.keys() == b.memory.keys() and a.memory
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
