"""Fault injection, site side: what a `faults:` rule does inside the real train app.

An injected exception is an ordinary exception raised by the app, so it travels back through the
executor like a real bug. A killed worker is a real ``os._exit`` of the worker process, which Parsl
reports as a lost worker (a transient cause, so Parsl retries it): a marker file makes the kill
happen once per (round, client), as a crash would, rather than on every retry. A slow client
sleeps for ``(slowdown - 1)`` times its measured training time (so its site looks that much slower),
plus ``delay_s``. A held client (``hold_at``) keeps its trained answer until the driver has moved
on without it (the next round has started, or the round is checkpointed), or until the drill's
release file exists: late (or, under FedBuff, stale) by construction rather than by a race against
the clock, and it arrives while the next round runs. Markers and checkpoints are read through the
run directory, so kills and holds need a site that shares the driver's disk.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fedgrid.apps import blackbox
from fedgrid.apps.task import TrainTask


class InjectedFault(RuntimeError):
    """A failure a `faults:` rule asked for (never raised outside a drill)."""


def before_training(task: TrainTask) -> None:
    f = task.faults
    if not f:
        return
    rnd, client = task.round, task.client
    if f["kill"]:
        marker = Path(f["marker_dir"]) / f"killed-r{rnd:06d}-c{client:05d}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            blackbox.vanish(137)  # the worker process dies mid-task, as on a node failure: retried
    if f["raise"]:
        raise InjectedFault(f"injected failure: client {client} raises at round {rnd}")
    if f["fail_p"] > 0:
        draw = np.random.default_rng([f["seed"], rnd, f["attempt"], client, 0xFA17]).random()
        if draw < f["fail_p"]:
            raise InjectedFault(f"injected failure: client {client}, round {rnd} (fail_p={f['fail_p']:.2f})")


def tamper(task: TrainTask, start: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> None:
    """A Byzantine client (``scale_update``): send ``G + scale * (x - G)`` instead of ``x``, in place."""
    s = (task.faults or {}).get("scale_update")
    if s is None:
        return
    for k, g in start.items():
        if np.issubdtype(np.asarray(g).dtype, np.floating):
            params[k] = (g + s * (params[k] - g)).astype(params[k].dtype)


def after_training(task: TrainTask, train_s: float) -> None:
    f = task.faults
    if not f:
        return
    time.sleep(max(0.0, (f["slowdown"] - 1.0) * train_s))
    if f.get("hold"):
        hold(f["hold"])
    time.sleep(f.get("delay_s", 0.0))


def hold(spec: dict) -> None:
    """Wait until one of ``spec["until"]`` exists (the next round's marker, the round's checkpoint,
    the release file), at most ``spec["max_s"]`` seconds."""
    paths = [Path(p) for p in spec["until"]]
    end = time.monotonic() + spec["max_s"]
    while not any(p.exists() for p in paths) and time.monotonic() < end:
        time.sleep(0.05)
