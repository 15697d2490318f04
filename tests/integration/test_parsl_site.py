"""A `parsl` site end to end: a user's factory builds a HighThroughputExecutor on a LocalProvider,
`fedgrid check` shows what it built, and a short run trains on it as it would on an `htex` site
(labelled with the site's name, warmed before round 1, shut down and forgotten at the end)."""

from __future__ import annotations

import pyarrow.parquet as pq

from fedgrid.flow.persist.runlock import recorded_processes
from fedgrid.flow.persist.table import rows_path

TRAIN = {"epochs": 1, "batch_size": 16, "lr": 0.1, "momentum": 0.9}
SITE = {"name": "a", "executor": {"kind": "parsl", "factory": "parsl_sites:htex"}, "clients": 6}


def test_a_pool_from_a_factory_is_checked_then_trains(write_job, cli, tmp_path):
    job = write_job(rounds=2, model="mlp", train=TRAIN, sites=[SITE])
    rc, out, err = cli("check", job)
    assert rc == 0, err
    assert "  a: parsl -> HighThroughputExecutor + LocalProvider; Parsl HighThroughputExecutor from " \
           "parsl_sites:htex: label a, LocalProvider, SingleNodeLauncher, 1 node(s)/block, 1 block(s) at start, " \
           "up to 1, 1 worker(s)/node, runs here, warmed before round 1, workers watched" in out.splitlines()

    rc, out, err = cli("run", job)
    assert rc == 0, err
    run_dir = tmp_path / "run"
    rows = pq.read_table(rows_path(run_dir)).to_pylist()
    assert [r["round"] for r in rows] == [1, 2]
    assert all(not r["failures"] and len(r["updates"]) == 6 for r in rows)
    first = rows[0]["updates"]
    assert {u["site"] for u in first} == {"a"} and len({u["worker"] for u in first}) == 1  # its one worker
    assert [u["cold"] for u in first] == [False] * 6  # warmed before round 1: its block started at once
    assert rows[-1]["test_accuracy"] > 0.5
    assert (run_dir / "parsl").is_dir()  # the run's own DataFlowKernel, shut down cleanly:
    assert not (run_dir / "processes.json").exists() and recorded_processes(run_dir) == []
