"""A job's own client code on real executors: the same model as fedgrid's loop through the public
helpers, a client without torch on HTEX workers, its metrics in the rounds table, and an error in
its code as that client's recorded failure with the remote traceback."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.table import rows_path
from fedgrid.flow.rounds.runner import run


def _final(result) -> dict[str, np.ndarray]:
    return ckpt.read_round(ckpt.round_path(result.run_dir, result.rounds_done)).params


@pytest.mark.parametrize("strategy", [{"name": "fedprox", "mu": 0.5}, {"name": "scaffold"}])
def test_a_user_loop_with_the_helpers_gives_the_builtin_model(strategy, tmp_path, make_job):
    common = dict(rounds=2, model="mlp", strategy=strategy, train={"epochs": 2, "batch_size": 32, "lr": 0.1},
                  sites=[{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}])
    builtin = run(parse_job(make_job(tmp_path / "builtin", **common)), quiet=True)
    mine = run(parse_job(make_job(tmp_path / "mine", client="sgd_client:SGDClient", **common)), quiet=True)
    a, b = _final(builtin), _final(mine)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
    assert not np.allclose(a["1.weight"], ckpt.read_round(ckpt.round_path(builtin.run_dir, 0)).params["1.weight"])
    # the user's own metrics reach the table as columns, beside the built-in loop's loss
    rows = pq.read_table(rows_path(mine.run_dir)).to_pylist()
    assert all(0.0 <= r["train_error_rate"] <= 1.0 for r in rows) and rows[0]["train_loss"] is None
    assert {m["name"] for u in rows[0]["updates"] for m in u["metrics"]} == {"error_rate", "steps_taken"}


def test_a_client_without_torch_trains_on_htex_and_a_failing_client_is_recorded(tmp_path, make_job):
    # one HTEX site of two worker processes (a second site would only add an interchange and a pool)
    htex = [{"name": "a", "executor": {"kind": "htex", "workers": 2}, "clients": 6}]
    job = parse_job(make_job(tmp_path / "run", rounds=3, client="broken_clients:RaisesForClient2", sites=htex,
                             data={"dataset": "custom", "clients": 6, "partition": {"kind": "iid"}},
                             train={"epochs": 2, "batch_size": 32, "lr": 0.5},
                             round={"min_clients": 4, "deadline_s": 120, "federated_every": 2, "show": "fed_accuracy"}))
    res = run(job, quiet=True)
    rows = pq.read_table(rows_path(res.run_dir)).to_pylist()
    assert [r["clients_ok"] for r in rows] == [5, 5, 5]  # client 2 fails every round; the rounds go on
    for r in rows:
        (f,) = r["failures"]
        assert f["client"] == 2 and f["reason"].startswith("ClientCodeError: ValueError: client 2 cannot read")
        assert "[at broken_clients.py:" in f["reason"]
    assert rows[-1]["train_accuracy"] > rows[0]["train_accuracy"] > 0.5  # numpy logistic regression learns
    assert all(u["worker"].split(":")[1] != str(os.getpid()) for u in rows[0]["updates"])  # in worker processes
    log = (res.run_dir / "fedgrid.log").read_text()
    assert "Traceback (most recent call last)" in log and 'raise ValueError("client 2 cannot read' in log
    assert rows[0]["test_accuracy"] is None  # no central test set: the data never left the sites
    # federated evaluation in rounds 2 and 3 (every 2, and the last): each client on its own data,
    # client 2 included (only its training fails)
    assert [r["round"] for r in rows if r["fed_clients"]] == [2, 3] and rows[0]["fed_accuracy"] is None
    last = rows[-1]
    accs = {c["client"]: c["metrics"][0]["value"] for c in last["fed_clients"]}
    assert sorted(accs) == list(range(6)) and last["fed_examples"] == 1797 and not last["fed_failures"]
    w = {c["client"]: c["examples"] for c in last["fed_clients"]}
    assert last["fed_accuracy"] == pytest.approx(sum(accs[c] * w[c] for c in accs) / sum(w.values()))
    assert last["fed_accuracy_min"] == min(accs.values()) <= last["fed_accuracy_p10"] <= last["fed_accuracy"]
    assert last["fed_accuracy"] > 0.8

    from fedgrid.flow.commands.report import write_report
    from fedgrid.flow.commands.status import status_info

    fed = status_info(res.run_dir)["metrics"]["federated"]
    assert fed["round"] == 3 and fed["clients"] == 6 and fed["metrics"]["accuracy"]["mean"] == last["fed_accuracy"]
    drawn = {p.name for p in write_report(res.run_dir)}
    assert "metrics.png" not in drawn  # accuracy only: the main plot
    assert {"fed_spread.png", "bytes.png"} <= drawn  # the clients' spread per evaluated round, the traffic


def test_the_builtin_client_evaluates_on_the_rows_it_holds_out(tmp_path, make_job):
    job = parse_job(make_job(tmp_path / "run", rounds=2, model="mlp", data={
        "dataset": "digits", "clients": 6, "partition": {"kind": "iid"}, "holdout": 0.25},
        train={"epochs": 1, "batch_size": 32, "lr": 0.1}, round={"min_clients": 6, "federated_every": 1},
        sites=[{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}]))
    rows = run(job, quiet=True).rows
    for r in rows:
        # 1438 training digits / 6 = 239 or 240 each; a quarter (60) held out, the rest trained on
        assert sorted(c["examples"] for c in r["fed_clients"]) == [60] * 6
        assert sum(u["examples"] for u in r["updates"]) == 1438 - 360
        assert r["fed_loss"] is not None and r["test_accuracy"] is not None  # beside the central test set
