"""The tracking thread's contract, with in-memory sinks: every round once, in order, whatever the
sink does (fails for a while, was behind, never comes back), and the driver never waits on it."""

from __future__ import annotations

import logging
import threading

import pytest

from fedgrid.flow.tracking import Tracking, job_params, row_metrics


class Memory:
    """A sink that keeps what it was given; `down` calls fail, `gate` holds every call until set."""

    name = "memory"
    keeps_artifacts = True

    def __init__(self, last: int = 0, down: int = 0, gate: threading.Event | None = None):
        self.last, self.down, self.gate = last, down, gate
        self.steps: list[int] = []
        self.params_seen: dict[str, str] = {}
        self.finished: list = []
        self.calls = 0

    def _call(self) -> None:
        if self.gate is not None:
            self.gate.wait()
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionError("server down")

    def open(self) -> int:
        self._call()
        return self.last

    def params(self, values: dict[str, str]) -> None:
        self.params_seen.update(values)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._call()
        self.steps.append(step)

    def finish(self, artifacts: list) -> None:
        self._call()
        self.finished = artifacts


def _row(r: int) -> dict:
    return {"round": r, "clients_ok": 5, "test_accuracy": 0.5 + r / 100, "updates": [{"client": 0}], "note": "x",
            "ok": True, "dp_epsilon": None, "bad": float("nan")}


def test_rows_become_scalar_metrics_and_the_job_flat_params(make_job, tmp_path):
    from fedgrid.flow.config import parse_job

    assert row_metrics(_row(3)) == {"clients_ok": 5.0, "test_accuracy": 0.53}
    p = job_params(parse_job(make_job(tmp_path / "r"), "j.yaml"))
    assert p["train.lr"] == "0.05" and p["sites.1.executor.kind"] == "htex" and p["strategy.name"] == "fedavg"


def test_a_sink_that_fails_for_a_while_gets_every_round_once_in_order():
    sink = Memory(down=3)  # open and the first metrics calls fail: retried, never lost
    t = Tracking([sink], {"a": "1"}, backlog=lambda after: [], retry_s=0.01)
    for r in range(1, 6):
        t.round(_row(r))
    t.close(lambda: ["model.safetensors"], drain_s=60)
    assert sink.steps == [1, 2, 3, 4, 5] and sink.params_seen == {"a": "1"} and sink.finished == ["model.safetensors"]


def test_a_tracker_behind_the_table_catches_up_and_never_logs_a_step_twice():
    """A resumed run: the tracker holds rounds 1-2, the table has 1-4, this run adds 5 (and hands
    round 4 again, as a row the writer re-reads might be)."""
    sink = Memory(last=2)
    t = Tracking([sink], {}, backlog=lambda after: [_row(r) for r in range(after + 1, 5)], retry_s=0.01)
    t.round(_row(4))
    t.round(_row(5))
    t.close(drain_s=60)
    assert sink.steps == [3, 4, 5]


def test_the_driver_never_waits_on_a_tracker_and_a_dead_one_is_given_up_at_close(caplog):
    gate = threading.Event()  # the tracker's server never answers while the run goes on
    sink = Memory(gate=gate)
    t = Tracking([sink], {}, backlog=lambda after: [], retry_s=0.01)
    for r in range(1, 50):
        t.round(_row(r))  # returns at once: nothing here waits for the sink
    assert sink.calls == 0
    with caplog.at_level(logging.WARNING, logger="fedgrid"):
        t.close(drain_s=0.2)
    assert "did not catch up" in caplog.text and "rounds.parquet" in caplog.text
    gate.set()


@pytest.mark.parametrize(("over", "key"), [({"tracking": {"mlflow": {"uri": 5}}}, "tracking.mlflow.uri"),
                                           ({"tracking": {"wandb": True}}, "tracking")])
def test_a_wrong_tracking_block_names_its_key(over, key, make_job, tmp_path):
    from fedgrid.flow.config import ConfigError, parse_job

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_job(make_job(tmp_path / "r", **over), "j.yaml")
