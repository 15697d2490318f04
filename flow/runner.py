"""The round loop: select -> train apps on their sites -> tolerant gather -> aggregate -> checkpoint.

`run(job)` is what both the CLI and Python pipeline scripts call. It owns the run directory (one
driver at a time, orphans of a dead driver reaped), resumes from the newest valid checkpoint, and
overlaps the bookkeeping of round r (central evaluation, the Arrow checkpoint, the rounds table,
the progress line) with the training of round r+1 on a single background thread, so the sites
never wait for the driver's disk. Rounds are still written strictly in order, and a failed write
stops the run before another round is started.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedgrid.apps import codec, datasets
from fedgrid.apps.store import Ref, Store
from fedgrid.flow import asyncloop, dataplane, faults, pacing, selection, validate
from fedgrid.flow import checkpoint as ckpt
from fedgrid.flow import profiles as prof
from fedgrid.flow.config import Job
from fedgrid.flow.gather import SITE_DOWN, Gathered, gather
from fedgrid.flow.memory import UpdateMemory
from fedgrid.flow.privacy import BudgetSpent, Privacy
from fedgrid.flow.progress import RunProgress, setup_log
from fedgrid.flow.runlock import RunLock, reap
from fedgrid.flow.secagg import SecAggFailed, SecureAggregation
from fedgrid.flow.strategies import make_strategy

log = logging.getLogger("fedgrid")


class RoundFailed(Exception):
    """A round missed its quorum on every attempt; the run stops at the last good round."""


class SiteDown(Exception):
    """A client was not sent: its site has no workers (recorded as the client's failure)."""


def _failed(exc: BaseException) -> Future:
    fut: Future = Future()
    fut.set_exception(exc)
    return fut


class ResumeRefused(Exception):
    """The run directory holds rounds of a job this one cannot continue."""


@dataclass
class RunResult:
    run_dir: Path
    rounds_done: int
    resumed_from: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False  # stopped early on request (SIGTERM), after a finished round

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}


def model_spec(job: Job, shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    return {"name": job.model.name, "input_shape": list(shape), "num_classes": num_classes,
            "kwargs": job.model.kwargs}


def archive_rounds(run_dir: Path) -> Path | None:
    """Move earlier rounds aside (never delete a user's results) so a --fresh run starts clean."""
    items = [p for p in (run_dir / "rounds", ckpt.rows_path(run_dir)) if p.exists()]
    if not items:
        return None
    dest = run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in items:
        shutil.move(str(p), dest / p.name)
    return dest


class _Driver:
    """State of one run in progress; `run()` below is the public entry point."""

    def __init__(self, job: Job, run_dir: Path, progress: RunProgress):
        self.job, self.run_dir, self.progress = job, run_dir, progress
        self.sites = job.client_sites()
        self.site_data = {s.name: job.site_data(s.name).model_dump() for s in job.sites}
        self.strategy = make_strategy(job.strategy)
        self.rng = np.random.default_rng(job.seed)
        self.profiles = prof.empty(job.data.clients)
        self.rows: list[dict[str, Any]] = []
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedgrid-ckpt",
                                         initializer=_background_priority)
        self.pending: Future | None = None
        self.memory = UpdateMemory(job)
        self.late: list[tuple[int, int, Future]] = []  # (round trained for, client, future) past its deadline
        self.stop: threading.Event | None = None
        self.privacy: Privacy | None = None
        self.secagg: SecureAggregation | None = None
        # set once the driver has the test set and model (overlapping the workers' warm-up)
        self.mspec: dict[str, Any] = {}
        self.test: datasets.Arrays | None = None
        self.model: Any = None
        self.transfer: dataplane.TransferPlan | None = None
        self.store: Store | None = None
        # rounds whose store objects may still be read: asynchronous clients train from the globals
        # of the last max_staleness steps, and a late client (round.late=carry) from its round's
        self.sweep_lag = (getattr(self.strategy.opts, "max_staleness", 0) + 1 if self.strategy.asynchronous
                          else job.round.max_staleness + 1 if job.round.late == "carry" else 0)

    def stopping(self, after: int) -> bool:
        """A stop was requested (SIGTERM): no round after `after` starts; the finished ones are all saved."""
        if self.stop is None or not self.stop.is_set():
            return False
        self.progress.say(f"stop requested: stopping after round {after}")
        return True

    # -- tasks --------------------------------------------------------------------------------
    def task(self, client: int, rnd: int, params: dict[str, np.ndarray] | Ref | None,
             extra: dict[str, Any] | None = None, attempt: int = 1) -> dict[str, Any]:
        site = self.sites[client]
        t = {"client": client, "site": site, "round": rnd, "clients": self.job.data.clients,
             "seed": self.job.seed, "data": self.site_data[site], "model": self.mspec,
             "train": {**self.job.train.model_dump(), **(extra or {})}, "params": params,
             "submitted_at": time.time()}
        if self.job.faults and (f := faults.for_task(self.job, client, site, rnd, str(self.run_dir / "faults"),
                                                             attempt)):
            t["faults"] = f
        if self.transfer is not None and self.store is not None:
            t.update(store=self.store.url, ref_above=self.transfer.ref_above[site],
                     # per attempt: a client abandoned by attempt 1 may still write after attempt 2 answers
                     update_key=f"{_round_key(rnd)}/client-{client:05d}-a{attempt}")
        if self.privacy is not None and (dp := self.privacy.task_options()):
            t["dp"] = dp
        comp = self.job.compression
        if comp.up_codec() != "none":
            t["compress"] = {"codec": comp.up_codec(), "topk_fraction": comp.topk_fraction,
                             "dense_below": comp.dense_below,
                             "residual_key": f"state/residual/client-{client:05d}" if comp.needs_store() else None}
        return t

    def outgoing(self, rnd: int, params: dict[str, np.ndarray]) -> dict[str, Any]:
        """What each site receives as the global params: the arrays, or a Ref written once a round
        (in fp16 with compression.down: fp16; the driver keeps its full-precision model)."""
        params = codec.down(params, self.job.compression.down)
        tp = self.transfer
        if tp is None or not tp.any_ref() or self.store is None:
            return {s: params for s in self.site_data}
        ref = self.store.put(params, f"{_round_key(rnd)}/global")
        return {s: (ref if tp.by_ref[s] else params) for s in self.site_data}

    def busy(self) -> set[int]:
        """Clients whose late task of an earlier round is still running."""
        return {c for _, c, fut in self.late if not fut.done()}

    # -- one round ----------------------------------------------------------------------------
    def play_round(self, runtime: Any, rnd: int, params: dict[str, np.ndarray]) -> tuple[dict, Gathered, int]:
        rs = self.job.round
        sent = self.outgoing(rnd, params)
        if self.job.faults:
            runtime.apply_drills(faults.lost_sites(self.job, rnd))
        for attempt in range(1, rs.retries + 2):
            clients, skipped = selection.select(self.job, self.rng, self.profiles, rnd, self.busy())
            if not clients:
                raise RoundFailed(f"round {rnd}: every client was skipped ({skipped[0]['reason']}, ...); raise "
                                  f"round.deadline_s or use round.select: random")
            quorum = min(rs.min_clients, len(clients))
            instr = self.strategy.configure(rnd, clients, self.profiles)
            if rs.pace == "deadline":
                for c, steps in pacing.assign_steps(self.job, clients, self.profiles).items():
                    instr.setdefault(c, {})["steps"] = steps
            self.progress.round_started(rnd, len(clients))
            masking, early, problem = clients, [], None
            if self.secagg is not None:  # stages 1-2: keys and shares, before anyone trains
                try:
                    masking, early, opts = self.secagg.setup(rnd, clients, params)
                    for c, o in opts.items():
                        instr.setdefault(c, {})["secagg"] = o
                except SecAggFailed as e:
                    masking, problem = [], str(e)
            down = runtime.down_sites()
            futs = {c: (self.sites[c], _failed(SiteDown(SITE_DOWN)) if self.sites[c] in down else
                        runtime.submit(self.sites[c], self.task(c, rnd, sent[self.sites[c]], instr.get(c), attempt)))
                    for c in prof.longest_first(self.profiles, masking)}
            accept = ((lambda u: self.secagg.check(rnd, u.resolve())) if self.secagg is not None else
                      (lambda u: validate.check(u.resolve().decode(params), params, rs.max_update_norm)))
            g = gather(futs, quorum, rs.deadline_s, self.progress.client_done, accept=accept, down=runtime.down_sites)
            g.failures[:0] = early
            prof.update(self.profiles, rnd, g)
            arrived = self.watch_late(rnd, g)  # late tasks of a failed attempt keep their clients busy too
            secure = None
            if self.secagg is not None and problem is None and g.quorum_met(quorum):
                try:  # stage 4: unmask the sum
                    secure = self.secagg.finish(rnd, g.updates, params, g.failures)
                except SecAggFailed as e:
                    problem = str(e)
            if g.quorum_met(quorum) and problem is None:
                self.carry(rnd, g, arrived, params)
                reused = []
                if rs.absent == "reuse":
                    self.memory.remember(rnd, params, g.updates)
                    answered = {u.client for u in g.updates}
                    reused = self.memory.stand_ins(rnd, params, [c for c in clients if c not in answered], self.sites)
                ref_down = sum(r.nbytes for c in clients if isinstance(r := sent[self.sites[c]], Ref))
                return {"selected": clients, "attempt": attempt, "ref_down": ref_down, "skipped": skipped,
                        "reused": reused, "secure": secure}, g, quorum
            if problem is not None:
                g.failures.append({"client": -1, "site": "driver", "reason": problem})
            reasons = "; ".join(f"client {f['client']}@{f['site']}: {f['reason']}" for f in g.failures[:5])
            msg = (f"round {rnd} attempt {attempt}: {len(g.updates)} of {len(clients)} clients answered, "
                   f"quorum is {quorum} ({reasons})")
            self.progress.say(msg)
            if attempt > rs.retries:
                raise RoundFailed(f"{msg}; gave up after {rs.retries} retr{'y' if rs.retries == 1 else 'ies'}. "
                                  f"The run stopped at round {rnd - 1}; fix the failing sites and run again "
                                  f"to resume")
        raise AssertionError("unreachable")

    def watch_late(self, rnd: int, g: Gathered) -> list[tuple[int, int, Future]]:
        """Late tasks that have finished since they were given up: their timings teach the profiles
        (a client too slow for the deadline is then known to be); they are returned for `carry`.
        This attempt's late tasks are watched from now on; one still running keeps its client busy."""
        arrived, keep = [], []
        for item in self.late:
            fut = item[2]
            if not fut.done():
                keep.append(item)
            elif fut.exception() is None:
                prof.observe(self.profiles, fut.result())
                arrived.append(item)
        self.late = keep + [(rnd, c, fut) for c, (_, fut) in g.late.items()]
        return arrived

    def carry(self, rnd: int, g: Gathered, arrived: list[tuple[int, int, Future]],
              g_params: dict[str, np.ndarray]) -> None:
        """round.late=carry: late updates that have arrived join this round, weighted by
        (1 + staleness) ** -staleness_exponent, up to max_staleness rounds late."""
        rs = self.job.round
        if rs.late != "carry":
            return
        fresh = {u.client for u in g.updates}
        for r0, client, fut in arrived:
            stale = rnd - r0
            if client in fresh or stale > rs.max_staleness:
                continue
            try:
                # (no norm bound: it trained from an older model than g_params)
                u = validate.check(fut.result().resolve(), g_params)
            except Exception as e:  # noqa: BLE001 - a carried update that cannot be read is dropped
                log.warning("round %d: carried update of client %d dropped: %s", rnd, client, e)
                continue
            u.staleness, u.scale = stale, (1.0 + stale) ** -rs.staleness_exponent
            g.updates.append(u)
            fresh.add(client)
        g.updates.sort(key=lambda u: u.client)

    def snapshot(self, rnd: int, params: dict[str, np.ndarray], row: dict[str, Any]) -> ckpt.RoundState:
        """Round r's state, taken on the main thread before round r+1 touches the RNG or profiles."""
        return ckpt.RoundState(
            round=rnd, params=params, strategy=OrderedDict((k, v.copy()) for k, v in self.strategy.state().items()),
            profiles=OrderedDict((k, v.copy()) for k, v in self.profiles.items()), memory=self.memory.state(),
            rng=copy.deepcopy(self.rng.bit_generator.state), row=row, fingerprint=self.job.fingerprint(),
            job=self.job.model_dump(mode="json"))

    def finalize(self, state: ckpt.RoundState) -> None:
        """Background: evaluate, checkpoint, append the row, report. Runs strictly in round order."""
        rnd, params, row = state.round, state.params, state.row
        if self.test is not None and (rnd % self.job.round.eval_every == 0 or rnd == self.job.rounds):
            t0 = time.perf_counter()
            from fedgrid.apps.evaluate import evaluate

            m = evaluate(self.model, params, self.test)
            row.update(test_accuracy=m["accuracy"], test_loss=m["loss"], eval_s=time.perf_counter() - t0)
        ckpt.write_round(self.run_dir, state)
        self.rows.append(row)
        ckpt.write_rows(self.run_dir, self.rows)
        ckpt.prune(self.run_dir, self.job.checkpoint.keep, rnd)
        if self.store is not None:  # the round's objects are in the checkpoint now (or were transient)
            # this round's objects, and any a late client wrote for an earlier one; asynchronous
            # clients may still be reading the globals of the last max_staleness steps
            self.store.sweep(rnd - self.sweep_lag)
        self.progress.round_done(row)

    def hand_off(self, rnd: int, params: dict[str, np.ndarray], row: dict[str, Any]) -> None:
        state = self.snapshot(rnd, params, row)
        if self.pending is not None:
            self.pending.result()  # a failed write of the previous round stops the run here
        self.pending = self.writer.submit(self.finalize, state)

    def check_writes(self) -> None:
        """Raise now if a background write already failed, before another round is started."""
        if self.pending is not None and self.pending.done():
            self.pending.result()

    def drain(self) -> None:
        if self.pending is not None:
            self.pending.result()
        self.writer.shutdown(wait=True)


ALL_ROUNDS = 10**9  # Store.sweep bound that takes every round's objects


def _round_key(rnd: int) -> str:
    return f"round-{rnd:06d}"


def _background_priority() -> None:
    """Run the bookkeeping thread at the lowest CPU priority (Linux: per-thread nice).

    When sites share the driver's cores (one machine, or a laptop rehearsal), a third busy thread
    time-slices against the workers and measurably slows every client; at nice 19 the evaluation
    fills the idle gaps at a round's tail instead. On a real deployment the driver's cores are its
    own and this changes nothing.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _row(rnd: int, info: dict, g: Gathered, quorum: int, params_bytes: int, started: float,
         agg_s: float) -> dict[str, Any]:
    n = sum(u.num_examples for u in g.updates)
    wmean = (lambda k: float(sum(u.metrics.get(k, 0.0) * u.num_examples for u in g.updates) / n)) if n else None
    return {
        "round": rnd, "attempt": info["attempt"], "started_at": started, "seconds": time.time() - started,
        "test_accuracy": None, "test_loss": None,
        "train_loss": wmean("loss") if wmean else None, "train_accuracy": wmean("accuracy") if wmean else None,
        "clients_selected": len(info["selected"]), "clients_ok": len(g.updates), "clients_failed": len(g.failures),
        "participants": [u.client for u in g.updates], "failures": g.failures, "examples": n,
        "carried": [{"client": u.client, "staleness": u.staleness} for u in g.updates if u.staleness],
        "skipped": info.get("skipped", []),
        "reused": [{"client": u.client, "staleness": u.staleness} for u in info.get("reused", [])],
        "updates": [{"client": u.client, "site": u.site, "examples": u.num_examples, "loss": u.metrics.get("loss"),
                     "accuracy": u.metrics.get("accuracy"), "train_s": u.timings.get("train"),
                     "queue_s": u.timings.get("queue"), "worker": u.extras.get("worker"),
                     "steps": u.extras.get("steps"), "staleness": u.staleness, "bytes_up": u.nbytes()}
                    for u in g.updates],
        "bytes_down": params_bytes * len(info["selected"]), "bytes_up": sum(u.nbytes() for u in g.updates),
        "bytes_by_ref": info.get("ref_down", 0) + sum(u.ref.nbytes for u in g.updates if u.ref is not None),
        "gather_s": g.seconds, "aggregate_s": agg_s, "eval_s": None,
        "client_train_s_max": max((u.timings.get("train", 0.0) for u in g.updates), default=0.0),
        "client_queue_s_max": max((u.timings.get("queue", 0.0) for u in g.updates), default=0.0),
    }


def open_store(job: Job, run_dir: Path, params: dict[str, np.ndarray], progress: RunProgress,
               needed: bool = False, first: bool = False) -> tuple[dataplane.TransferPlan, Store | None]:
    """Decide how params travel; open (and clear out) this run's area of the store if one is used
    (`needed`: the strategy keeps client state there, whatever the params do; `first`: no round
    is checkpointed yet, so no client state is referred to either)."""
    nbytes = int(sum(a.nbytes for a in params.values()))
    tp = dataplane.plan(job, nbytes, run_dir)
    url = tp.store_url or dataplane.store_url(job.store.url or str(run_dir / "store"))
    if not (tp.any_ref() or needed):
        return tp, None
    if not job.store.url:  # an explicit store was probed before the sites started
        dataplane.check_store(url)
    store = Store(dataplane.run_area(url, job, run_dir))
    # round objects a crashed driver of this run left behind (other runs' areas are theirs; the
    # strategy's per-client state under state/ is kept: the checkpoint refers to it)
    store.sweep(ALL_ROUNDS)
    if first:
        store.delete("state")
    refs = [s for s, r in tp.by_ref.items() if r]
    if refs:
        progress.say(f"params ({nbytes / 2**20:.1f} MB) travel by reference to {', '.join(refs)} through {store.url}")
    return tp, store


def _resume_point(job: Job, run_dir: Path, progress: RunProgress) -> ckpt.RoundState | None:
    state, skipped = ckpt.latest_valid(run_dir)
    for path, why in skipped:
        progress.say(f"warning: skipped {path.name}: {why} (moved to rounds/corrupt/)")
    if state is not None and state.fingerprint != job.fingerprint():
        old = state.job
        raise ResumeRefused(
            f"{run_dir} holds rounds of a job with a different model or strategy (checkpoint: "
            f"model={old.get('model', {}).get('name')} strategy={old.get('strategy', {}).get('name')}; this job: "
            f"model={job.model.name} strategy={job.strategy.name}); run with --fresh to start over "
            f"(earlier rounds are moved to {run_dir / 'archive'}) or use another checkpoint.dir")
    return state


def run(job: Job, base: Path | None = None, fresh: bool = False, quiet: bool = False, stream=None,
        more: int | None = None, stop: threading.Event | None = None, log_format: str = "text") -> RunResult:
    """Run (or resume) `job` to `job.rounds` rounds; returns the rounds table rows.

    `more`: train that many rounds past the newest checkpoint instead (``fedgrid run --rounds +N``);
    the target is read under the run directory's lock, so two invocations never count the same
    rounds. `stop`: once set, the run finishes the round in progress, checkpoints it and returns
    (`stopped` is then true). `log_format`: ``text`` or ``json`` (one object a line) for the run
    directory's fedgrid.log.
    """
    run_dir = job.run_dir(base or Path.cwd()).resolve()
    lock = RunLock(run_dir)
    lock.acquire()
    handler: logging.Handler | None = None
    try:
        handler = setup_log(run_dir, log_format)
        return _run_locked(job, run_dir, fresh, quiet, stream, more, stop)
    except Exception:
        log.exception("run stopped")
        raise
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        lock.release()


def _run_locked(job: Job, run_dir: Path, fresh: bool, quiet: bool, stream, more: int | None,
                stop: threading.Event | None) -> RunResult:
    """The run itself, with the lock held and the log open (run() releases both whatever happens)."""
    # torch's import (~1.5 s) overlaps with the executors starting up; the driver needs it later
    threading.Thread(target=importlib.import_module, args=("torch",), daemon=True).start()
    t_start = time.time()
    progress = RunProgress(job.rounds, 0, quiet=quiet, stream=stream)
    runtime = drv = None
    try:
        if (n := reap(run_dir)):
            progress.say(f"ended {n} process(es) left behind by an earlier driver of this run")
        if fresh and (dest := archive_rounds(run_dir)):
            progress.say(f"--fresh: earlier rounds moved to {dest}")
        state = _resume_point(job, run_dir, progress)
        done = state.round if state else 0
        if more is not None:
            job = job.model_copy(update={"rounds": done + more})
        rows = ckpt.reconcile_rows(run_dir, done)
        if state is not None and done >= job.rounds:
            progress.summary(f"{job.name}: already complete ({done} rounds) in {run_dir}")
            return RunResult(run_dir, done, done, rows)
        progress.resume_at(done, job.rounds)
        if state:
            progress.say(f"resuming {job.name} after round {done} from {run_dir}")

        from fedgrid.flow.sites import SiteRuntime

        if job.store.url:  # an unusable store fails now, before any batch job is queued
            dataplane.check_store(dataplane.store_url(job.store.url))

        progress.say(f"{job.name}: starting {len(job.sites)} site(s): "
                     + ", ".join(f"{s.name} ({s.executor.kind}, {s.clients} clients)" for s in job.sites))

        runtime = SiteRuntime(job, run_dir)
        drv = _Driver(job, run_dir, progress)
        drv.rows, drv.stop = rows, stop
        drv.privacy = Privacy(job, rows) if job.privacy is not None else None
        drv.secagg = SecureAggregation(job, runtime, run_dir) if job.secagg is not None else None
        warm = runtime.warm_up(lambda c: drv.task(c, 0, None))

        # Driver-side setup overlaps with the workers' warm-up.
        import torch

        from fedgrid.apps.models import build, get_params, set_params

        torch.set_num_threads(1)
        drv.test = datasets.load_test(job.data.model_dump(), job.seed)
        shape, num_classes = datasets.meta(job.data.model_dump(), drv.test)
        drv.mspec = model_spec(job, shape, num_classes)
        torch.manual_seed(job.seed)
        drv.model = build(job.model.name, shape, num_classes, job.model.kwargs)
        params = get_params(drv.model)
        drv.transfer, drv.store = open_store(job, run_dir, params, progress,
                                             needed=bool(job.client_state()),
                                             first=state is None)
        drv.strategy.bind(job.data.clients, drv.store.url if drv.store is not None else None)
        if state is None:
            ckpt.write_round(run_dir, drv.snapshot(0, params, {"round": 0}))
        else:
            try:
                set_params(drv.model, state.params)
            except ValueError as e:
                raise ResumeRefused(f"{run_dir}: checkpoint of round {done} does not fit this job's model "
                                    f"({e}); run with --fresh to start over") from None
            params = state.params
            drv.strategy.load_state(state.strategy)
            drv.memory.load(state.memory)
            if prof.compatible(state.profiles, job.data.clients):
                drv.profiles = OrderedDict((k, v.copy()) for k, v in state.profiles.items())
            if state.rng:
                drv.rng.bit_generator.state = state.rng
        for f in warm:
            if (exc := f.exception()) is not None:
                progress.say(f"warning: warm-up failed on a worker: {exc}")
        runtime.record()
        params_bytes = codec.nbytes(codec.down(params, job.compression.down))  # what one client receives
        why = "on request"
        if drv.strategy.asynchronous:
            asyncloop.run(drv, runtime, done, params, params_bytes)
        else:
            for rnd in range(done + 1, job.rounds + 1):
                if drv.stopping(rnd - 1):
                    break
                drv.check_writes()
                started = time.time()
                if drv.privacy is not None:
                    try:
                        drv.privacy.check_budget(rnd)
                    except BudgetSpent as e:
                        progress.say(str(e))
                        why = "the privacy budget is spent"
                        break
                info, g, quorum = drv.play_round(runtime, rnd, params)
                t0 = time.perf_counter()
                if drv.privacy is not None:
                    drv.privacy.prepare(rnd, params, g.updates)
                ups = [info["secure"]] if info.get("secure") is not None else g.updates + info["reused"]
                params = drv.strategy.aggregate(rnd, params, ups, g.failures)
                row = _row(rnd, info, g, quorum, params_bytes, started, time.perf_counter() - t0)
                if drv.privacy is not None:
                    drv.privacy.record(row)
                drv.hand_off(rnd, params, row)
        drv.drain()
        if drv.store is not None:
            drv.store.sweep(ALL_ROUNDS)
        last = drv.rows[-1] if drv.rows else {}
        took = time.time() - t_start
        acc = last.get("test_accuracy")
        reached = int(last.get("round", done))
        progress.summary(
            f"{job.name}: {len(drv.rows)} rounds done"
            + (f" (stopped {why} at round {reached} of {job.rounds})" if reached < job.rounds else "")
            + (f", test accuracy {acc:.4f}" if acc is not None else "")
            + f", {took:.1f} s this run ({(took / max(reached - done, 1)):.2f} s/round); results in "
              f"{ckpt.rows_path(run_dir)}")
        return RunResult(run_dir, reached, done or None, drv.rows, stopped=reached < job.rounds)
    finally:
        try:
            if drv is not None:
                try:  # rounds already finished are written even when a later round fails
                    drv.drain()
                except Exception as e:  # noqa: BLE001 - report, but keep the original error
                    log.error("checkpoint write failed: %s", e)
        finally:  # a second Ctrl-C during the drain must still stop the executors
            progress.close()
            if runtime is not None:
                runtime.close()
