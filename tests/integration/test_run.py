"""End to end on real Parsl executors: failures as data, quorum, the CLI's exit codes, an exact resume.
(Two HTEX sites' routing, warm workers and checkpoints, and what a resume refuses, are checked on
the run test_resume's SIGKILL drill starts: one start of those sites serves both.)"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from fedgrid.flow.commands.cli import main
from fedgrid.flow.config import load_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.rounds.runner import RoundFailed, run


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory, make_job):
    """Per-client Parquet shards written by `fedgrid partition` (once for this module), as a
    deployment would hand out."""
    tmp = tmp_path_factory.mktemp("partition")
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(make_job(tmp / "run")))
    shards = tmp / "shards"
    assert main(["partition", str(job), "--out", str(shards)]) == 0
    assert sorted(p.name for p in shards.iterdir()) == [f"client-00{i}.parquet" for i in range(6)] + ["test.parquet"]
    return shards


def _partitioned(tmp_path, shards_made):
    """A copy of the shards for one test to break, and the data block that reads them."""
    shards = tmp_path / "shards"
    shutil.copytree(shards_made, shards)
    data = {"dataset": "parquet", "clients": 6, "path": str(shards / "client-{client:03d}.parquet"),
            "test_path": str(shards / "test.parquet"), "partition": {"kind": "none"}}
    return shards, data


def test_failed_client_is_recorded_and_round_goes_on(tmp_path, write_job, partitioned):
    shards, data = _partitioned(tmp_path, partitioned)
    sizes = [pq.read_metadata(shards / f"client-00{i}.parquet").num_rows for i in range(6)]
    (shards / "client-002.parquet").write_bytes(b"this site's shard is broken")
    # threads: a failure is data whatever the executor kind (test_globus_compute mixes kinds in one run)
    sites = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 3},
             {"name": "b", "executor": {"kind": "local", "workers": 1}, "clients": 3}]
    res = run(load_job(write_job(data=data, sites=sites, rounds=2)), quiet=True)
    for r in res.rows:
        assert r["clients_ok"] == 5 and r["participants"] == [0, 1, 3, 4, 5]
        (f,) = r["failures"]
        assert f["client"] == 2 and f["site"] == "a" and "Parquet" in f["reason"]
        assert r["examples"] == sum(sizes) - sizes[2]
    assert res.rows[-1]["test_accuracy"] > 0.3


def test_missed_quorum_retries_then_stops_loudly(tmp_path, write_job, partitioned):
    _, data = _partitioned(tmp_path, partitioned)
    for c in (1, 4):
        (tmp_path / "shards" / f"client-00{c}.parquet").write_bytes(b"broken")
    sites = [{"name": "a", "executor": {"kind": "local", "workers": 3}, "clients": 6}]
    job = load_job(write_job(data=data, sites=sites, round={"min_clients": 5, "retries": 2}))
    with pytest.raises(RoundFailed, match=r"round 1 attempt 3: [0-4] of 6 clients answered, quorum is 5") as e:
        run(job, quiet=True)
    assert "gave up after 2 retries" in str(e.value)
    # nothing half-done was checkpointed: only the initial model, and no empty model ever
    assert [r for r, _ in ckpt.round_files(job.run_dir(tmp_path))] == [0]
    init = ckpt.read_round(ckpt.round_path(job.run_dir(tmp_path), 0))
    assert all(np.isfinite(a).all() for a in init.params.values())


def test_cli_run_status_and_exit_codes(tmp_path, write_job, cli):
    # (the CLI in this process: the exit code of a process of its own is test_schedule's and test_resume's)
    job = write_job(rounds=2, train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                    sites=[{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}])
    rc, out, err = cli("run", job)
    assert rc == 0, err
    assert "round    2/2" in out and "2 rounds done" in out
    rc, out, _ = cli("status", tmp_path / "run", "--json")
    info = yaml.safe_load(out)
    assert rc == 0 and info["rounds_done"] == 2 and info["rounds_target"] == 2 and info["running_pid"] is None
    rc, _, err = cli("run", job, "--set", "model=mlp")
    assert rc == 2 and "different model" in err and "Traceback" not in err


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, write_job):
    """Round 3 after stopping at 2 and resuming is bit-identical to 3 rounds in one go (RNG, selection)."""
    sites = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}]
    rnd = {"fraction": 0.5, "min_clients": 2}
    whole = run(load_job(write_job(rounds=3, sites=sites, round=rnd,
                                   checkpoint={"dir": str(tmp_path / "whole")})), quiet=True)
    run(load_job(write_job(rounds=2, sites=sites, round=rnd, checkpoint={"dir": str(tmp_path / "split")})),
        quiet=True)
    split = run(load_job(write_job(rounds=3, sites=sites, round=rnd, checkpoint={"dir": str(tmp_path / "split")})),
                quiet=True)
    assert split.resumed_from == 2
    a = ckpt.read_round(ckpt.round_path(whole.run_dir, 3))
    b = ckpt.read_round(ckpt.round_path(split.run_dir, 3))
    assert a.row["participants"] == b.row["participants"] and len(a.row["participants"]) == 3
    assert a.rng == b.rng
    for k in a.params:
        assert a.params[k].tobytes() == b.params[k].tobytes(), k
