"""What the driver makes of a batch site's blocks (flow/rounds/blocks.py), with the scheduler's
answers and the clock given by the test; and how Slurm's and PBS's answers are read."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedgrid.executors import batch, pbs, slurm
from fedgrid.flow.rounds.blocks import BlockWatch


class FakeExecutor:
    """What BlockWatch uses of Parsl's HTEX: its blocks, scaling out, holding, its managers."""

    def __init__(self):
        self.blocks_to_job_id: dict[str, str] = {}
        self._status: dict = {}
        self.held: list[str] = []
        self.cancelled: list[str] = []
        self.managers: list[dict] = []
        self.provider = SimpleNamespace(cancel=self.cancelled.extend)

    def scale_out_facade(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            b = str(len(self.blocks_to_job_id))
            self.blocks_to_job_id[b] = str(100 + int(b))
            out.append(b)
        return out

    def _hold_block(self, block: str) -> None:
        self.held.append(block)

    def connected_managers(self) -> list[dict]:
        return self.managers


class World:
    """The scheduler's answers (job -> state, reason, left) and the clock."""

    def __init__(self):
        self.now = 0.0
        self.jobs: dict[str, tuple[str, str, float | None]] = {}
        self.answer = True

    def query(self, ids: list[str]):
        if not self.answer:
            return None
        return {j: batch.Block("", j, *self.jobs[j]) for j in ids if j in self.jobs}


@pytest.fixture
def w():
    return World()


def _watch(w: World, ex: FakeExecutor, round_s: float = 30.0) -> BlockWatch:
    return BlockWatch("hpc", ex, "Slurm", w.query, poll_s=5.0, round_s=round_s, clock=lambda: w.now)


def _running(w: World, left: float = 500.0) -> tuple[FakeExecutor, BlockWatch]:
    """A site whose one block (job 100) runs, as the watch has seen it."""
    ex = FakeExecutor()
    ex.scale_out_facade(1)
    w.jobs["100"] = ("RUNNING", "", left)
    watch = _watch(w, ex)
    assert watch.unavailable() is None
    return ex, watch


def _later(w: World, watch: BlockWatch, s: float) -> str | None:
    w.now += s
    return watch.unavailable()


def test_a_block_waiting_longer_than_a_round_makes_the_site_queued_with_the_schedulers_reason(w):
    ex = FakeExecutor()
    ex.scale_out_facade(1)
    w.jobs["100"] = ("PENDING", "PartitionDown", None)
    watch = _watch(w, ex)
    assert watch.unavailable() is None  # just submitted: its clients are sent and wait
    assert _later(w, watch, 29) is None
    assert _later(w, watch, 6) == "queued: Slurm job 100 PENDING (PartitionDown) for 35 s"
    w.jobs["100"] = ("RUNNING", "", 500.0)
    assert _later(w, watch, 5) is None
    assert [e["event"] for e in watch.events] == ["started"]


def test_a_lost_block_fails_the_site_until_a_block_runs_and_fedgrid_replaces_it_if_parsl_did_not(w):
    ex = FakeExecutor()
    ex.scale_out_facade(1)
    w.jobs["100"] = ("RUNNING", "", 500.0)
    watch = _watch(w, ex)
    assert watch.unavailable() is None
    w.jobs["100"] = ("CANCELLED", "", None)
    why = _later(w, watch, 5)
    assert why == "site lost: Slurm job 100 CANCELLED"
    assert list(ex.blocks_to_job_id) == ["0"]  # Parsl's strategy gets a poll to replace it first
    assert _later(w, watch, 5).startswith("site lost: Slurm job 100 CANCELLED; replacement job 101 PENDING")
    w.jobs["101"] = ("PENDING", "Priority", None)
    assert _later(w, watch, 5) == "site lost: Slurm job 100 CANCELLED; replacement job 101 PENDING"
    w.jobs["101"] = ("RUNNING", "", 600.0)
    assert _later(w, watch, 5) is None
    assert [e["event"] for e in watch.events] == ["started", "lost", "requested", "back"]


def test_a_replacement_parsl_already_runs_still_drops_the_lost_blocks_clients_for_a_poll(w):
    ex, watch = _running(w)
    w.jobs["100"] = ("TIMEOUT", "TimeLimit", None)
    ex.scale_out_facade(1)  # Parsl's strategy, before the driver looked
    w.jobs["101"] = ("RUNNING", "", 600.0)
    assert _later(w, watch, 5) == "site lost: Slurm job 100 TIMEOUT (TimeLimit); replacement job 101 RUNNING"
    assert _later(w, watch, 5) is None
    assert [e["event"] for e in watch.events] == ["started", "requested", "lost", "back"]
    assert len(ex.blocks_to_job_id) == 2  # fedgrid asked for none


def test_a_block_parsl_scaled_in_is_not_a_loss(w):
    ex, watch = _running(w)
    w.jobs["100"] = ("CANCELLED", "", None)
    ex._status["0"] = SimpleNamespace(state=SimpleNamespace(name="SCALED_IN"))
    assert _later(w, watch, 5) is None and [e["event"] for e in watch.events] == ["started"]


def test_a_block_short_of_walltime_is_drained_replaced_and_released_once_idle(w):
    ex = FakeExecutor()
    ex.scale_out_facade(1)
    w.jobs["100"] = ("RUNNING", "", 100.0)
    watch = _watch(w, ex, round_s=30.0)
    assert watch.unavailable() is None and not ex.held  # 100 s left: a round (30) and two polls fit
    w.jobs["100"] = ("RUNNING", "", 39.0)
    assert _later(w, watch, 5) is None  # still serving: its tasks finish, new ones wait for the next
    assert ex.held == ["0"] and list(ex.blocks_to_job_id) == ["0", "1"]
    ex.managers = [{"block_id": "0", "tasks": 1}]
    w.jobs["101"] = ("RUNNING", "", 600.0)
    _later(w, watch, 5)
    assert not ex.cancelled  # a task is still on it
    ex.managers = [{"block_id": "0", "tasks": 0}]
    _later(w, watch, 5)
    assert ex.cancelled == ["100"]
    w.jobs["100"] = ("CANCELLED", "", None)
    assert _later(w, watch, 5) is None  # a drained block that ends is not a loss
    assert [e["event"] for e in watch.events] == ["started", "draining", "requested", "released", "ended"]


def test_a_scheduler_that_does_not_answer_leaves_the_last_view(w):
    ex, watch = _running(w)
    w.answer = False
    assert _later(w, watch, 5) is None and watch.blocks[0].state == "RUNNING"


def test_slurm_and_pbs_answers_are_read_into_blocks(monkeypatch):
    monkeypatch.setattr(batch, "run", lambda cmd, **k: "7|RUNNING|None|1-02:03:04\n8|PENDING|Priority|10:00\n")
    got = slurm.query(["7", "8", "9"])
    assert got["7"] == batch.Block("", "7", "RUNNING", "", 93784.0)
    assert got["8"] == batch.Block("", "8", "PENDING", "Priority", None) and "9" not in got
    monkeypatch.setattr(batch, "run", lambda cmd, **k: None)
    assert slurm.query(["7"]) is None  # no answer is not "every job is gone"
    done = {"job_state": "F", "Exit_status": -29}
    running = {"job_state": "R", "Resource_List": {"walltime": "01:00:00"}, "resources_used": {"walltime": "00:10:00"}}
    assert pbs._block("5.pbs", done).state == "TIMEOUT"
    assert pbs._block("5.pbs", {"job_state": "F", "Exit_status": 271}).state == "CANCELLED"
    assert pbs._block("5.pbs", running).left_s == 3000.0
    assert pbs._block("5.pbs", {"job_state": "Q", "comment": "Not Running: Insufficient resources"}).reason \
        .startswith("Not Running")
    assert batch.seconds("UNLIMITED") is None and batch.seconds("5:07") == 307.0
