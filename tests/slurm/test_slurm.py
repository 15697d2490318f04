"""fedgrid on a real Slurm cluster: train apps inside Slurm jobs, and the drills of a batch site.

Each drill is driven by what the run itself reports (its marker files and round files), never by
guessing how long something takes: the cancel lands while the site's clients are held in their
round, the queue is released once the run has gone on without the site, and the driver's SIGTERM
is sent once a round is checkpointed.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from fedgrid.flow.commands.cli import main
from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import recorded_processes
from fedgrid.flow.persist.table import rows_path
from fedgrid.flow.rounds.runner import run

HOSTNAME = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()


def _wait_for(what, timeout_s: float = 120.0, every: float = 0.2):  # noqa: ANN001 - what() -> truthy
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if (got := what()):
            return got
        time.sleep(every)
    raise AssertionError(f"gave up waiting after {timeout_s:g} s")


def _in_thread(job) -> tuple[threading.Thread, dict]:  # noqa: ANN001 - a Job
    out: dict = {}

    def go() -> None:
        try:
            out["result"] = run(job, quiet=True)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


def _finish(t: threading.Thread, out: dict, timeout_s: float = 240.0):
    t.join(timeout_s)
    assert not t.is_alive(), "the run did not finish"
    if "error" in out:
        raise out["error"]
    return out["result"]


def _cluster_job(make_job, run_dir: Path, slurm_site, rounds: int, deadline: float, faults: list, **site) -> dict:
    """Two clients on a Slurm site, two on an HTEX site beside it (the round's quorum without the
    Slurm site), every client a second slower than it trains (rounds last long enough to act in)."""
    return make_job(run_dir, rounds=rounds, model="mlp", data={"dataset": "digits", "clients": 4,
                                                               "partition": {"kind": "iid"}},
                    train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                    round={"min_clients": 2, "deadline_s": deadline},
                    sites=[slurm_site("cluster", 2, **site),
                           {"name": "local", "executor": {"kind": "htex", "workers": 1}, "clients": 2}],
                    faults=[{"delay_s": 1.0}, *faults])


def _events(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "sites.json").read_text())["cluster"]["events"]


def _cluster_jobs(row: dict) -> set:
    return {u["batch_job"] for u in row["updates"] if u["site"] == "cluster"}


def test_a_cancelled_block_costs_its_clients_one_round_and_a_new_block_brings_the_site_back(
        tmp_path, make_job, slurm_site, capsys):
    """Drill 1 (scancel of the site's block mid-round), and the Slurm path end to end: the train
    apps run inside Slurm jobs, their job id and worker host in every row; `fedgrid check` shows
    the batch script, `fedgrid status` the blocks."""
    run_dir = tmp_path / "run"
    spec = _cluster_job(make_job, run_dir, slurm_site, rounds=10, deadline=60,
                        faults=[{"site": "cluster", "hold_at": [3]}])
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    assert main(["check", str(tmp_path / "job.yaml")]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --partition=debug" in script and "process_worker_pool.py" in script

    t, out = _in_thread(parse_job(spec))
    _wait_for(lambda: (run_dir / "faults" / "started-r000003").exists())
    first = _wait_for(lambda: [e["job"] for e in _events_now(run_dir) if e["event"] == "started"])[0]
    time.sleep(1.0)  # the held clients of round 3 are on the block now (they hold until round 4)
    subprocess.run(["scancel", first], check=True)
    res = _finish(t, out)

    rows = res.rows
    assert all(_cluster_jobs(r) == {first} for r in rows[:2])  # rounds 1-2: inside the first block
    assert all(u["worker"].startswith(HOSTNAME) for r in rows for u in r["updates"])
    lost = [f for f in rows[2]["failures"] if f["site"] == "cluster"]
    assert len(lost) == 2 and all(f["reason"].startswith(f"site lost: Slurm job {first} CANCELLED") for f in lost)
    assert rows[2]["clients_ok"] == 2  # round 3 completed with the other site, not at its deadline
    back = [r["round"] for r in rows if _cluster_jobs(r) - {first, None}]
    assert back and back[0] <= 9 and _cluster_jobs(rows[-1]) - {first, None}  # a new block, within a few rounds
    kinds = [e["event"] for e in _events(run_dir)]
    assert kinds.index("lost") < kinds.index("back") and "requested" in kinds

    assert main(["status", str(run_dir)]) == 0
    status = capsys.readouterr().out
    assert f"Slurm job {first} CANCELLED" in status and f"lost: job {first}" in status


def _events_now(run_dir: Path) -> list[dict]:
    try:
        return _events(run_dir)
    except (OSError, ValueError, KeyError):
        return []


def test_a_held_queue_leaves_the_site_out_as_queued_until_its_block_starts(
        tmp_path, make_job, slurm_site, partition_down):
    """Drill 3: the partition is DOWN when the run starts, so the site's block stays PENDING. The
    rounds go on with the other site within their deadline and quorum; the Slurm site's clients
    are left out with the reason "queued"; once the partition is up, the block starts and the
    site joins."""
    run_dir = tmp_path / "run"
    # (a hold_at rule makes the run leave its started-rNNNNNN markers; round 99 never comes)
    spec = _cluster_job(make_job, run_dir, slurm_site, rounds=9, deadline=8, faults=[{"hold_at": [99]}])
    t, out = _in_thread(parse_job(spec))
    _wait_for(lambda: (run_dir / "faults" / "started-r000004").exists())
    partition_down()  # (the fixture's release: the partition is UP again)
    rows = _finish(t, out).rows
    assert all(r["clients_ok"] >= 2 for r in rows)  # every round met its quorum with the other site
    # rounds 3 and 4 began more than a round after the block was submitted, and before it could start
    queued = [f["reason"] for r in rows[2:4] for f in r["failures"] if f["site"] == "cluster"]
    assert len(queued) == 4 and all(q.startswith("queued: Slurm job ") and "(PartitionDown)" in q for q in queued)
    assert _cluster_jobs(rows[-1]) - {None}  # it joined once its block started


def test_a_block_near_its_walltime_is_drained_and_replaced_before_it_expires(tmp_path, make_job, slurm_site):
    """Drill 2: one-minute blocks, rounds that may take 40 s. When a block has less walltime left
    than a round needs, it takes no new task and the next block is requested, so no client is
    ever on a block Slurm kills for its time limit: the round goes on without a single failure."""
    run_dir = tmp_path / "run"
    spec = _cluster_job(make_job, run_dir, slurm_site, rounds=16, deadline=40, faults=[], walltime="00:01:00")
    rows = _finish(*_in_thread(parse_job(spec))).rows
    assert all(r["clients_failed"] == 0 for r in rows), [(r["round"], r["failures"]) for r in rows if r["failures"]]
    events = _events(run_dir)
    drained = [e for e in events if e["event"] == "draining"]
    assert drained and "walltime left" in drained[0]["detail"]
    new = [e for e in events if e["event"] == "requested" and e["at"] >= drained[0]["at"]]
    assert new, events
    old, after = drained[0]["job"], [r for r in rows if r["started_at"] > drained[0]["at"] + 1]
    assert after and all(old not in _cluster_jobs(r) for r in after)  # nothing more went to the old block
    assert len({j for r in rows for j in _cluster_jobs(r)}) >= 2


DRIVER_SCRIPT = """#!/bin/bash
#SBATCH --job-name=fedgrid-driver
#SBATCH --time=00:10:00
#SBATCH --signal=B:TERM@120
#SBATCH --output={out}
#SBATCH --open-mode=append
cd {work}
exec fedgrid run job.yaml
"""


def test_the_driver_as_a_batch_job_stops_on_sigterm_and_its_next_submission_resumes(tmp_path, make_job, slurm):
    """Drill 4: the batch recipe of docs/guide/operations.md. `--signal=B:TERM@N` has Slurm send SIGTERM to the batch
    shell (fedgrid, by exec) N seconds before the time limit; here the same signal is sent with
    `scancel --signal=TERM --batch` once a round is checkpointed. The job finishes its round,
    checkpoints and exits 0 (COMPLETED); the same script submitted again resumes, and a plain
    `scancel` of that job (every process signalled) stops it cleanly too; a third submission
    finishes the run."""
    run_dir = tmp_path / "run"
    spec = make_job(run_dir, rounds=12, model="mlp", data={"dataset": "digits", "clients": 2},
                    train={"epochs": 1, "batch_size": 32, "lr": 0.05}, round={"min_clients": 2, "deadline_s": 60},
                    sites=[{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 2}],
                    faults=[{"delay_s": 1.0}])
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    script = tmp_path / "driver.sbatch"
    script.write_text(DRIVER_SCRIPT.format(out=tmp_path / "driver.out", work=tmp_path))
    job = subprocess.run(["sbatch", "--parsable", "--export=ALL", str(script)], capture_output=True, text=True,
                         check=True).stdout.strip()
    _wait_for(lambda: [r for r, _ in ckpt.round_files(run_dir) if r >= 2])
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], check=True)
    _wait_for(lambda: _state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 120)
    assert _state(job) == "COMPLETED", (tmp_path / "driver.out").read_text()[-2000:]
    done = [r["round"] for r in pq.read_table(rows_path(run_dir)).to_pylist()]
    assert 2 <= len(done) < 12 and done == list(range(1, len(done) + 1))
    assert "stop requested" in (tmp_path / "driver.out").read_text()

    # a plain scancel (and a walltime) signals every process of the job at once, the interchange
    # and the worker pools with the driver: the driver still stops cleanly, and nothing is left
    before = len((tmp_path / "driver.out").read_text())
    second = subprocess.run(["sbatch", "--parsable", "--export=ALL", str(script)], capture_output=True, text=True,
                            check=True).stdout.strip()
    _wait_for(lambda: [r for r, _ in ckpt.round_files(run_dir) if r > done[-1]])
    subprocess.run(["scancel", second], check=True)
    _wait_for(lambda: _state(second) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 120)
    out = (tmp_path / "driver.out").read_text()[before:]
    assert "stopped on request" in out and "Traceback" not in out, out[-2000:]
    assert recorded_processes(run_dir) == []
    done = [r["round"] for r in pq.read_table(rows_path(run_dir)).to_pylist()]
    assert done == list(range(1, len(done) + 1)) and ckpt.latest_valid(run_dir)[0].round == done[-1] < 12

    again = subprocess.run(["sbatch", "--parsable", "--export=ALL", str(script)], capture_output=True, text=True,
                           check=True).stdout.strip()
    _wait_for(lambda: _state(again) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 180)
    assert _state(again) == "COMPLETED", (tmp_path / "driver.out").read_text()[-2000:]
    assert [r["round"] for r in pq.read_table(rows_path(run_dir)).to_pylist()] == list(range(1, 13))
    assert f"resuming t after round {done[-1]}" in (tmp_path / "driver.out").read_text()


def _state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(autouse=True)
def _no_leftover_jobs():
    """Jobs a failed test left behind would hold the node for the next test."""
    yield
    names = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout.split("\n")
    jobs = [n.split()[0] for n in names if n.split()[1:] and n.split()[1].startswith(("parsl.", "fedgrid-"))]
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True)
