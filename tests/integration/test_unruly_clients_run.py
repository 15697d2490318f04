"""Client code that misbehaves at its site costs only its own client (tests/clients/unruly_client.py):
in one htex run of 4 clients on 2 workers, round 2 has a client that hangs and one that segfaults
its worker, round 3 one that returns an object array, and one client prints 600 KB a round and
leaves a double-forked daemon behind every round. The run finishes all its rounds, the site's other
clients answer in the very round of the hang and the crash, each failure says what happened, the
workers' output stays within `train.output_mb`, and no daemon outlives its task."""

from __future__ import annotations

import os

import pyarrow.parquet as pq

from fedgrid.apps.outputs import running
from fedgrid.flow.persist.table import rows_path


def test_hung_crashing_and_noisy_clients_cost_only_themselves(tmp_path, write_job, cli) -> None:
    acts = {"1@2": "hang", "2@2": "segfault", "2@3": "object"}
    job = write_job(rounds=3, client={"path": "unruly_client:Unruly",
                                      "options": {"acts": acts, "noisy": 3, "pids": str(tmp_path / "pids")}},
                    data={"dataset": "custom", "clients": 4, "partition": {"kind": "iid"}},
                    train={"epochs": 1, "batch_size": 32, "lr": 0.5, "timeout_s": 8, "output_mb": 1},
                    round={"min_clients": 2, "deadline_s": 120},
                    sites=[{"name": "a", "executor": {"kind": "htex", "workers": 2}, "clients": 4}])
    rc, _, err = cli("run", job, "--quiet")
    assert rc == 0, err
    rows = {r["round"]: r for r in pq.read_table(rows_path(tmp_path / "run")).to_pylist()}
    assert sorted(rows) == [1, 2, 3]
    why = {r: {f["client"]: f["reason"] for f in rows[r]["failures"]} for r in rows}
    assert why[1] == {}
    assert set(why[2]) == {1, 2} and rows[2]["clients_ok"] == 2  # clients 0 and 3 answered in round 2
    # (8 s: a client's first round on a busy machine imports sklearn well within it)
    assert why[2][1] == ("timeout: training ran past 8 s (train.timeout_s) and was ended at its site and its "
                         "worker given back")
    assert why[2][2].startswith("worker died: SIGSEGV in client code [at unruly_client.py:"), why[2][2]
    assert why[2][2].endswith("in train]; the pool replaced the worker")
    assert set(why[3]) == {2} and "param 'w' of dtype object" in why[3][2]  # client 1 trains again
    # each round's daemon was gone when the next round began, and none is left now
    assert [rows[r]["train_orphans_alive"] for r in (2, 3)] == [0.0, 0.0]
    children = [int(f.read_text()) for f in (tmp_path / "pids").glob("child-*")]
    assert len(children) == 3 and not [p for p in children if running(p)]
    logs = sorted((tmp_path / "run" / "logs" / "workers").glob("*.log"))
    assert logs
    for log in logs:
        kept = log.stat().st_size + (os.path.getsize(f"{log}.1") if os.path.exists(f"{log}.1") else 0)
        assert kept <= 1 << 20, (log, kept)
    assert any("last line of round 3" in log.read_text() for log in logs)
