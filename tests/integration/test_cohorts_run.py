"""Cohort tasks (several clients of a site in one train task, apps/cohort.py) keep every client
its own: in one htex task of four clients, one raises, one hangs past its limit, one crashes its
worker and one answers; the answer is accepted and each failure says what happened (the crash is
named when Parsl's retry runs the cohort again). And a cohort changes no model: client state with
FedProx, and SCAFFOLD's variates, give the same global model as one task per client (1e-6)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.table import rows_path
from fedgrid.flow.rounds.runner import run


def test_in_one_cohort_a_raise_a_hang_and_a_crash_cost_only_their_own_clients(tmp_path, write_job, cli):
    acts = {"0@1": "raise", "1@1": "hang", "2@1": "segfault"}
    job = write_job(rounds=1, client={"path": "unruly_client:Unruly", "options": {"acts": acts}},
                    data={"dataset": "custom", "clients": 4, "partition": {"kind": "iid"}},
                    train={"epochs": 1, "batch_size": 32, "lr": 0.5, "timeout_s": 3},
                    round={"min_clients": 1, "deadline_s": 120},
                    sites=[{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 4, "cohort": 4}])
    rc, _, err = cli("run", job, "--quiet")
    assert rc == 0, err
    row = pq.read_table(rows_path(tmp_path / "run")).to_pylist()[0]
    why = {f["client"]: f["reason"] for f in row["failures"]}
    assert row["participants"] == [3] and set(why) == {0, 1, 2}
    assert why[0].startswith("ClientCodeError: RuntimeError: client 0 was told to raise [at unruly_client.py:")
    assert why[1] == ("timeout: training ran past 3 s (train.timeout_s) and was ended at its site and its "
                      "worker given back")
    assert why[2].startswith("worker died: SIGSEGV in client code [at unruly_client.py:"), why[2]
    log = (tmp_path / "run" / "fedgrid.log").read_text()
    assert "round 1: site a: 4 clients in 1 task(s)" in log


def _job(make_job, run_dir, strategy: str, cohort: int) -> dict:
    sites = [{"name": n, "executor": {"kind": "local", "workers": 2}, "clients": 4, "cohort": cohort}
             for n in ("a", "b")]
    job = make_job(run_dir, rounds=3, sites=sites, strategy=strategy,
                   data={"dataset": "digits", "clients": 8, "partition": {"kind": "dirichlet", "alpha": 0.5}},
                   train={"epochs": 1, "batch_size": 16, "lr": 0.05, "keep_clients": 2},
                   round={"min_clients": 8, "deadline_s": 60})
    if strategy == "fedprox":  # a stateful client of the user's (Adam, BatchNorm, an RNG, a counter)
        job["client"] = "stateful_client:StatefulClient"
        job.pop("model")
    else:
        job["train"]["momentum"] = 0.0  # SCAFFOLD with plain SGD, on the built-in client
    return job


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold"])
def test_cohorts_give_the_model_of_one_task_per_client(tmp_path, make_job, strategy):
    finals = []
    for cohort in (1, 4):
        run_dir = tmp_path / f"cohort{cohort}"
        run(parse_job(_job(make_job, run_dir, strategy, cohort)), quiet=True)
        finals.append(ckpt.read_round(ckpt.round_path(run_dir, 3)).params)
        if cohort == 4:
            assert "round 3: site a: 4 clients in 1 task(s)" in (run_dir / "fedgrid.log").read_text()
    assert list(finals[0]) == list(finals[1])
    for k in finals[0]:
        np.testing.assert_allclose(finals[0][k], finals[1][k], atol=1e-6, err_msg=k)
