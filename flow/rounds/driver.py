"""The state of one run in progress, built in one place from its parts (flow/rounds/runner.py
makes the parts; the synchronous rounds and the asynchronous loop play on it)."""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from fedgrid.apps.records import RoundRow
from fedgrid.executors import site_workers
from fedgrid.flow.clients import personal
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.clients.memory import UpdateMemory
from fedgrid.flow.config import Job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.privacy.dp import Privacy
from fedgrid.flow.privacy.secagg import SecureAggregation
from fedgrid.flow.rounds import validate
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.rounds.progress import RunProgress
from fedgrid.flow.rounds.tasks import Tasks
from fedgrid.flow.rounds.writer import RoundWriter
from fedgrid.flow.strategies.base import Strategy


@dataclass
class Late:
    """A task given up at its deadline that is still running: its client is busy, and with
    round.late=carry its answer may join a later round."""

    round: int  # the round it trained for
    client: int
    future: Future
    base: dict[str, np.ndarray] | None = None  # the global model it trained from (its update's norm is from it)


class Driver:
    """Everything a run's rounds read and change: the sites, the strategy and its state, the
    clients' profiles and memory, the RNG of selection, the tasks it sends and the writer of
    finished rounds. `snapshot` captures all of it for a checkpoint."""

    def __init__(self, job: Job, run_dir: Path, progress: RunProgress, runtime: Any, strategy: Strategy,
                 tasks: Tasks, writer: RoundWriter, privacy: Privacy | None, secagg: SecureAggregation | None,
                 stop: threading.Event | None):
        self.job, self.run_dir, self.progress, self.runtime = job, run_dir, progress, runtime
        self.strategy, self.tasks, self.writer = strategy, tasks, writer
        self.privacy, self.secagg, self.stop = privacy, secagg, stop
        self.sites = job.client_sites()
        self.site_specs = {s.name: s for s in job.sites}  # each site's cohort setting (flow/rounds/cohorts.py)
        self.site_workers = {s.name: site_workers(s.executor) for s in job.sites}
        self.rng = np.random.default_rng(job.seed)
        self.profiles = prof.empty(job.data.clients)
        self.memory = UpdateMemory(job)
        self.late: list[Late] = []
        self.horizon: list[list[int]] = [[0, job.rounds]]
        self._stop_seen: float | None = None  # when `down` first saw the stop request

    def aim(self, done: int) -> None:
        """The run's target from here: a new target (``--rounds +N``, a changed ``rounds``) starts
        a new phase at round `done`, so a client's schedule over rounds continues from its value
        there instead of jumping (Work.schedule); every task carries the phases."""
        if self.horizon[-1][1] != self.job.rounds:
            self.horizon.append([done, self.job.rounds])
        self.tasks.horizon = tuple((int(a), int(b)) for a, b in self.horizon)

    def aggregate(self, rnd: int, params: dict[str, np.ndarray], updates: list,
                  failures: list) -> dict[str, np.ndarray]:
        """The strategy's step, then the rules no strategy may bend: personal layers keep their
        global values (flow/clients/personal.py). The one place every round and server step goes through."""
        out = self.strategy.aggregate(rnd, params, updates, failures)
        return personal.hold(params, out, (self.tasks.keep or {}).get("personal") or [])

    def examples_limit(self, client: int) -> int:
        """The most examples `client` may claim now (the job's cap, growth from what it answered)."""
        rs = self.job.round
        return validate.examples_limit(float(self.profiles["examples"][client]), rs.max_examples, rs.examples_growth)

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def down(self) -> dict[str, str]:
        """Sites whose pending clients fail now (the gather polls it): those with no workers, and
        every site once a stop has waited ``round.stop_wait_s`` for the round in progress, so that
        a stop ends the run in bounded time (a batch scheduler SIGKILLs what is left 30 s after
        its SIGTERM) with the finished rounds intact."""
        down = self.runtime.down_sites()
        if not self.stop_requested:
            return down
        self._stop_seen = self._stop_seen or time.monotonic()
        if time.monotonic() - self._stop_seen < self.job.round.stop_wait_s:
            return down
        why = f"stopped: the run was asked to stop and round.stop_wait_s={self.job.round.stop_wait_s:g} passed"
        return {s.name: why for s in self.job.sites}

    def stopping(self, after: int) -> bool:
        """A stop was requested (SIGTERM): no round after `after` starts; the finished ones are all saved."""
        if not self.stop_requested:
            return False
        self.progress.say(f"stop requested: stopping after round {after}")
        return True

    def busy(self) -> set[int]:
        """Clients whose late task of an earlier round is still running."""
        return {x.client for x in self.late if not x.future.done()}

    def watch_late(self, rnd: int, g: Gathered, base: dict[str, np.ndarray] | None = None) -> list[Late]:
        """Late tasks that have finished since they were given up: their timings teach the profiles
        (a client too slow for the deadline is then known to be); they are returned for carrying.
        This attempt's late tasks are watched from now on; one still running keeps its client busy."""
        arrived, keep = [], []
        for item in self.late:
            if not item.future.done():
                keep.append(item)
            elif item.future.exception() is None:
                prof.observe(self.profiles, item.future.result())
                arrived.append(item)
        self.late = keep + [Late(rnd, c, fut, base) for c, (_, fut) in g.late.items()]
        return arrived

    def restore(self, state: ckpt.RoundState) -> None:
        """Continue from a checkpoint: the strategy's state, the memory, profiles and RNG."""
        self.strategy.load_state(state.strategy)
        self.memory.load(state.memory)
        if prof.compatible(state.profiles, self.job.data.clients):
            self.profiles = OrderedDict((k, v.copy()) for k, v in state.profiles.items())
        if state.rng:
            self.rng.bit_generator.state = state.rng
        if state.horizon:
            self.horizon = [list(h) for h in state.horizon]

    def snapshot(self, rnd: int, params: dict[str, np.ndarray], row: RoundRow) -> ckpt.RoundState:
        """Round r's state, taken on the main thread before round r+1 touches the RNG or profiles."""
        return ckpt.RoundState(
            round=rnd, params=params, strategy=OrderedDict((k, v.copy()) for k, v in self.strategy.state().items()),
            profiles=OrderedDict((k, v.copy()) for k, v in self.profiles.items()), memory=self.memory.state(),
            rng=copy.deepcopy(self.rng.bit_generator.state), fingerprint=self.job.fingerprint(),
            row=cast("dict[str, Any]", row),  # (the checkpoint stores the row as the plain dict it is)
            job=self.job.model_dump(mode="json"), horizon=[list(h) for h in self.horizon])

    def hand_off(self, rnd: int, params: dict[str, np.ndarray], row: RoundRow) -> None:
        """Round `rnd` is aggregated: snapshot it now, write it in the background. A fine-tuning
        run's rows (and so its checkpoints) name the frozen base its params belong to."""
        if base := self.tasks.code.get("base"):
            row.update({"base_name": base["name"], "base_sha256": base["sha256"]})
        self.writer.hand_off(self.snapshot(rnd, params, row))
