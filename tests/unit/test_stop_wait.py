"""A stop ends a synchronous round in bounded time: once a SIGTERM has waited `round.stop_wait_s`
for the round in progress, the gather's poll of down sites names every site, so the pending
clients fail and the run stops after its last finished round (flow/rounds/driver.py `down`)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from fedgrid.flow.config import parse_job
from fedgrid.flow.rounds import driver as drv_mod
from fedgrid.flow.rounds.driver import Driver


def test_every_site_is_down_once_a_stop_has_waited_stop_wait_s(tmp_path, make_job, monkeypatch) -> None:
    job = parse_job(make_job(tmp_path / "run", round={"stop_wait_s": 20}), "job.yaml")
    clock = [100.0]
    monkeypatch.setattr(drv_mod.time, "monotonic", lambda: clock[0])
    stop = threading.Event()
    d = SimpleNamespace(job=job, stop=stop, _stop_seen=None,
                        runtime=SimpleNamespace(down_sites=lambda: {"b": "site down: ..."}))
    d.stop_requested = False
    assert Driver.down(d) == {"b": "site down: ..."}  # no stop: only what the sites say
    stop.set()
    d.stop_requested = True
    assert Driver.down(d) == {"b": "site down: ..."}  # the stop is seen now: the round may finish
    clock[0] += 19.0
    assert Driver.down(d) == {"b": "site down: ..."}
    clock[0] += 1.5
    why = "stopped: the run was asked to stop and round.stop_wait_s=20 passed"
    assert Driver.down(d) == {s.name: why for s in job.sites}
