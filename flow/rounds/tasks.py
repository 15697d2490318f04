"""What the driver sends to the sites: the global params of a round and each client's TrainTask.

The one place that knows what a site needs to train, so the synchronous rounds, the asynchronous
loop and the warm-up all send the same thing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from fedgrid.apps import codec, sitestate
from fedgrid.apps.guard import Guard
from fedgrid.apps.records import ClientCode, CompressSettings, Instructions, TrainSettings
from fedgrid.apps.store import Ref, Store
from fedgrid.apps.task import TrainTask
from fedgrid.flow.config import Job
from fedgrid.flow.persist import dataplane
from fedgrid.flow.privacy.dp import Privacy
from fedgrid.flow.rounds import faults
from fedgrid.flow.strategies import STRATEGIES


def round_key(rnd: int) -> str:
    """The store folder of a round's objects (its global model, by-reference updates)."""
    return f"round-{rnd:06d}"


class Tasks:
    """Builds the TrainTasks of one run from its parts: the job, the client code the sites run, how
    params travel (the transfer plan and store), and local DP's options when the job uses them."""

    def __init__(self, job: Job, run_dir: Path, code: ClientCode, transfer: dataplane.TransferPlan,
                 store: Store | None, privacy: Privacy | None, kinds: dict[str, str] | None = None,
                 nonce: str = "0"):
        """`kinds`: each param's kind (apps/kinds.py), known once the model is built: the codec
        sends statistics and counters whole. `nonce`: the run's (SiteRuntime), for the guards."""
        self.job, self.code, self.transfer, self.store = job, code, transfer, store
        self.guards = guards(job, run_dir, nonce)
        self.sites = job.client_sites()
        self.site_data = {s.name: job.site_data(s.name).model_dump() for s in job.sites}
        self.fault_dir = str(run_dir / "faults")
        self.dp = privacy.task_options() if privacy is not None else None
        self.compress = self._compression(kinds)
        # round.aggregate: site: each site's store (its own `store`, else this run's), in this run's area
        self.site_store: dict[str, str] = {}
        if job.round.aggregate == "site" and store:
            self.site_store = {s.name: dataplane.run_area(dataplane.store_url(s.store), job, run_dir) if s.store
                               else store.url for s in job.sites}
        self.horizon: tuple[tuple[int, int], ...] = ((0, job.rounds),)  # Driver.aim sets the run's
        self.keep: dict[str, Any] | None = None  # client state and personalization (Tasks.keeping)

    def keeping(self, options: dict[str, Any] | None) -> None:
        """Clients keep state at their sites (flow/clients/personal.py `keep_options`): every task
        then names the version its client starts from."""
        if options is None:
            self.keep = None
            return
        if self.store is None:
            raise RuntimeError("client state needs the store (open_store with needed=True)")
        self.keep = {**options, "store": self.store.url}

    @property
    def area(self) -> str | None:
        """This run's area of the store: where every by-reference answer must point (None: no store)."""
        return self.store.url if self.store is not None else None

    def _compression(self, kinds: dict[str, str] | None = None) -> CompressSettings | None:
        """The compress block of every train task; `kinds` (apps/kinds.py, known once the model
        is built) names the statistics and counters the codec sends whole and exact (``exact``;
        None: the site infers them from names and dtypes)."""
        from fedgrid.apps.kinds import buffers

        comp = self.job.compression
        if comp.up_codec() == "none":
            return None
        return {"codec": comp.up_codec(), "topk_fraction": comp.topk_fraction, "dense_below": comp.dense_below,
                "feedback": comp.needs_store(),  # top-k's residual, kept in the client's state
                "exact": buffers(kinds) if kinds else None}

    def train(self, client: int, rnd: int, params: dict[str, np.ndarray] | Ref | None,
              extra: Instructions | None = None, attempt: int = 1,
              state: tuple[dict | None, list[str]] | None = None) -> TrainTask:
        """Client `client`'s task for round `rnd`; `extra` is the strategy's instructions for it,
        `state` the version of its state to start from and the versions to keep (profiles.state_of)."""
        job, site = self.job, self.sites[client]
        train: TrainSettings = {**cast(TrainSettings, job.train.model_dump()), **(extra or {})}
        task = TrainTask(client=client, site=site, round=rnd, clients=job.data.clients, seed=job.seed,
                         data=self.site_data[site], code=self.code, train=train,
                         params=params, submitted_at=time.time(), attempt=attempt, dp=self.dp, horizon=self.horizon,
                         guard=self.guards[rnd == 0])
        if self.keep is not None:
            have, keep = state or (None, [])
            task.keep = {**self.keep, "folder": sitestate.FOLDER.format(client=client), "have": have, "keep": keep}
        if job.faults:
            task.faults = faults.for_task(job, client, site, rnd, self.fault_dir, attempt)
        if self.store is not None:
            task.store, task.ref_above = self.store.url, self.transfer.ref_above[site]
            task.update_key = self.update_key(rnd, client, attempt)
        if self.site_store:  # round.aggregate: site: the update goes to its site's store, for its aggregator
            task.store, task.sum_at_site = self.site_store[site], True
            task.update_key = self.update_key(rnd, client, attempt)
        if self.compress is not None:
            task.compress = self.compress
        return task

    @staticmethod
    def update_key(rnd: int, client: int, attempt: int) -> str:
        # per attempt: a client abandoned by attempt 1 may still write after attempt 2 answers
        return f"{round_key(rnd)}/client-{client:05d}-a{attempt}"

    def warm(self, client: int) -> TrainTask:
        """A warm-up task: this client's data and code, no params."""
        return self.train(client, 0, None)

    def outgoing(self, rnd: int, params: dict[str, np.ndarray], name: str = "global") -> dict[str, Any]:
        """What each site receives as the global params: the arrays, or a Ref written once a round
        (in fp16 with compression.down: fp16; the driver keeps its full-precision model). `name`
        keeps apart the round's objects: its global model, and the model it evaluates."""
        params = codec.down(params, self.job.compression.down)
        tp = self.transfer
        if not tp.any_ref() or self.store is None:
            return {s: params for s in self.site_data}
        ref = self.store.put(params, f"{round_key(rnd)}/{name}")
        return {s: (ref if tp.by_ref[s] else params) for s in self.site_data}


def guards(job: Job, run_dir: Path, nonce: str) -> tuple[Guard, Guard]:
    """How sites contain the client code of a round's task and of a warm-up (apps/guard.py): a
    client's task is limited by ``train.timeout_s``, else by how long its answer can still be used
    (:func:`useful_s`); a warm-up (the client's constructor, its data) by the deadline the driver
    waits for it."""
    out = str(run_dir / "logs" / "workers")
    output_max = int(job.train.output_mb * (1 << 20))

    def guard(limit_s: float | None, limit_key: str) -> Guard:
        return Guard(limit_s=limit_s, limit_key=limit_key, run=nonce, output_dir=out, output_max=output_max)

    warm = guard(job.round.deadline_s, "round.deadline_s")
    if job.train.timeout_s is not None:
        return guard(job.train.timeout_s, "train.timeout_s"), warm
    why = "round.deadline_s and max_staleness" if job.round.late == "carry" else "twice round.deadline_s"
    return guard(useful_s(job), why), warm


def useful_s(job: Job) -> float:
    """How long a client's answer can still be used: twice the round's deadline (a late answer
    still teaches the client's profile, which `round.select: deadline` plans with; FedBuff forgets
    a task then), or with ``round.late: carry`` as long as a later round takes it (max_staleness
    rounds on). Past that, running on only holds a worker its site's other clients need."""
    rs = job.round
    if rs.late == "carry" and not STRATEGIES[job.strategy.name].asynchronous:
        return rs.deadline_s * max(2, 1 + rs.max_staleness)
    return 2 * rs.deadline_s
