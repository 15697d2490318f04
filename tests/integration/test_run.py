"""End to end on real Parsl executors: routing, accuracy, failures as data, quorum, resume refusal."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from fedgrid.flow.config import load_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.table import rows_path
from fedgrid.flow.rounds.runner import ResumeRefused, RoundFailed, run


def test_two_htex_sites_train_and_checkpoint(write_job):
    job = load_job(write_job())
    res = run(job, quiet=True)
    rows = pq.read_table(rows_path(res.run_dir)).to_pylist()
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["clients_ok"] == 6 and r["clients_failed"] == 0 for r in rows)
    # the model learns: digits after 3 rounds of FedAvg is far above chance (0.1)
    assert rows[-1]["test_accuracy"] > 0.5
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    # routing: clients 0-2 ran on site a's worker, 3-5 on site b's, and never on the other
    workers = {s: {u["worker"] for r in rows for u in r["updates"] if u["site"] == s} for s in "ab"}
    assert len(workers["a"]) == 1 and len(workers["b"]) == 1 and workers["a"] != workers["b"]
    assert {u["client"] for r in rows for u in r["updates"] if u["site"] == "a"} == {0, 1, 2}
    # the warm-up carried the model: each site's one worker built it before round 1, so no client
    # of round 1 had to (a warm task without the model's shapes left every first task cold)
    assert [u["cold"] for u in rows[0]["updates"]] == [False] * 6
    # the worker is persistent: one process served every round of its site
    # every round file verifies and the newest holds the final model
    assert [r for r, _ in ckpt.round_files(res.run_dir)] == [0, 1, 2, 3]
    for _, p in ckpt.round_files(res.run_dir):
        ckpt.read_round(p)
    final = ckpt.read_round(ckpt.round_path(res.run_dir, 3))
    assert final.row["test_accuracy"] == rows[-1]["test_accuracy"]
    assert (res.run_dir / "fedgrid.log").read_text().count("round") >= 3

    # asking for more rounds resumes after round 3 (on threads: a run may change its sites, and the
    # HTEX path is the one above)
    threads = [{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}]
    again = run(load_job(write_job(rounds=5, sites=threads)), quiet=True)
    assert again.resumed_from == 3
    assert [r["round"] for r in pq.read_table(rows_path(res.run_dir)).to_pylist()] == [1, 2, 3, 4, 5]

    # a changed model is refused, --fresh starts over and archives the old rounds
    with pytest.raises(ResumeRefused, match="different model"):
        run(load_job(write_job(rounds=5, model="mlp")), quiet=True)
    fresh = run(load_job(write_job(rounds=1, model="mlp", sites=threads)), quiet=True, fresh=True)
    assert [r["round"] for r in fresh.rows] == [1]
    assert list((res.run_dir / "archive").glob("*/rounds.parquet"))


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory, make_job):
    """Per-client Parquet shards written by `fedgrid partition` (once for this module), as a
    deployment would hand out."""
    tmp = tmp_path_factory.mktemp("partition")
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(make_job(tmp / "run")))
    shards = tmp / "shards"
    out = subprocess.run([sys.executable, "-m", "fedgrid.flow.commands.cli", "partition", str(job), "--out",
                          str(shards)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
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


def test_cli_run_status_and_exit_codes(tmp_path, write_job):
    job = write_job(rounds=2, sites=[{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 6}])
    cli = [sys.executable, "-m", "fedgrid.flow.commands.cli"]
    out = subprocess.run(cli + ["run", str(job)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "round    2/2" in out.stdout and "2 rounds done" in out.stdout
    st = subprocess.run(cli + ["status", str(tmp_path / "run"), "--json"], capture_output=True, text=True)
    info = yaml.safe_load(st.stdout)
    assert info["rounds_done"] == 2 and info["rounds_target"] == 2 and info["running_pid"] is None
    bad = subprocess.run(cli + ["run", str(job), "--set", "model=mlp"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "different model" in bad.stderr and "Traceback" not in bad.stderr


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
