"""A batch site's blocks as its scheduler reports them, and what that means for the rounds.

Parsl notices a lost block late: its managers are declared lost only after the heartbeat threshold,
its Slurm provider polls every 60 s, and a cancelled block reads as COMPLETED without accounting.
The driver asks the scheduler itself (executors/batch.py, at most every ``status_poll_s``) and
acts at once:

- **lost**: a block that was running has ended (CANCELLED by ``scancel``, TIMEOUT, NODE_FAIL, ...)
  and none is running. The site's in-flight clients fail now with that reason, new clients are not
  sent, and a replacement block is requested if none is waiting. The site is back when a block
  runs again.
- **queued**: no block is running and one has waited longer than ``round.deadline_s`` (a held
  partition, a busy queue). Its clients are left out with the scheduler's reason until it starts.
- **draining**: a running block has less walltime left than a round needs. Its managers are held
  (they finish their tasks, take no new ones) and the next block is requested now, so the block
  expires idle instead of killing a round's clients ("drain, don't die").

Every transition (started, lost, requested, back, draining, released, ended) is logged and kept
as a timeline (`events`), which `fedgrid status` shows with
the blocks (``sites.json`` in the run directory).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fedgrid.executors import parsl_api
from fedgrid.executors.batch import ENDED, Block

log = logging.getLogger("fedgrid")

Query = Callable[[list[str]], dict[str, Block] | None]


class BlockWatch:
    def __init__(self, site: str, executor: Any, scheduler: str, query: Query, poll_s: float, round_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.site, self.ex, self.scheduler, self.query = site, executor, scheduler, query
        self.poll_s, self.round_s, self.clock = poll_s, round_s, clock
        self.blocks: list[Block] = []
        self.events: list[dict[str, Any]] = []
        self.polled_at = -float("inf")
        self.waiting_since: float | None = None  # no block running since (None: one runs)
        self.lost: tuple[float, str] | None = None  # when and why it was lost, until a block runs again
        self.running_seen: set[str] = set()  # blocks seen running
        self.draining: set[str] = set()
        self.replace_at: float | None = None  # when to request a block if Parsl has not by then
        self.known: set[str] = set()  # blocks already in the timeline

    # -- what the rounds ask ------------------------------------------------------------------------
    def unavailable(self) -> str | None:
        """Why the site's clients cannot be served now (lost or queued), or None."""
        self.refresh()
        if self.lost is not None:
            return self.lost[1] + self._waiting_for()
        if self.waiting_since is not None and self.clock() - self.waiting_since > self.round_s:
            pending = [b for b in self.blocks if b.state not in ENDED]
            if pending:
                b = pending[0]
                return (f"queued: {self.scheduler} job {b.job} {b.state}" + (f" ({b.reason})" if b.reason else "")
                        + f" for {self.clock() - self.waiting_since:.0f} s")
        return None

    def _waiting_for(self) -> str:
        live = [b for b in self.blocks if b.state not in ENDED]
        return f"; replacement job {live[0].job} {live[0].state}" if live else ""

    # -- polling --------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.polled_at < self.poll_s:
            return
        self.polled_at = now
        jobs = {job: block for block, job in dict(self.ex.blocks_to_job_id).items() if job is not None}
        if not jobs:
            self.blocks = []
            self._no_block_running(now)
            return
        seen = self.query(sorted(jobs))
        if seen is None:  # the scheduler did not answer: keep the last view, ask again next poll
            return
        self.blocks = [seen.get(job) or Block(block, job, "GONE") for job, block in sorted(jobs.items())]
        for b in self.blocks:
            b.block = jobs[b.job]
        self._new_blocks()
        self._judge(now)

    def _judge(self, now: float) -> None:
        if self.replace_at is not None and now >= self.replace_at:
            self.replace_at = None
            if not any(b.state not in ENDED for b in self.blocks):
                self._replace("the site's block ended and none was requested since")
        running = [b for b in self.blocks if b.state == "RUNNING"]
        ended = [b for b in self.blocks if b.block in self.running_seen and b.state in ENDED
                 and not self._scaled_in(b.block)]
        for b in ended:
            drained = b.block in self.draining
            self.running_seen.discard(b.block)
            self.draining.discard(b.block)
            if drained:
                self._event("ended", b, f"{b.state} after it was drained: no client was on it")
            elif not self.running_seen - self.draining:  # it was the block serving the site
                self._lose(now, b)
        if running:
            # lost stays at least until the next poll, even when a replacement already runs: the
            # clients that were on the lost block are dropped meanwhile (a gather polls faster)
            lost = self.lost
            back = lost is not None and now > lost[0]
            if lost is not None and back:
                self._event("back", running[0], f"{now - lost[0]:.1f} s after it was lost")
                self.lost = None
            if not self.running_seen and not back and self.lost is None:
                self._event("started", running[0], f"after {now - self.waiting_since:.1f} s waiting"
                            if self.waiting_since is not None else "running when first seen")
            self.waiting_since = None
            self.running_seen.update(b.block for b in running)
            self._drain(running)
        else:
            self._no_block_running(now)

    def _no_block_running(self, now: float) -> None:
        if self.waiting_since is None:
            self.waiting_since = now

    def _scaled_in(self, block: str) -> bool:
        """Parsl ended this block itself (idle): not a loss."""
        return parsl_api.block_state(self.ex, block) == "SCALED_IN"

    def _lose(self, now: float, b: Block) -> None:
        why = f"site lost: {self.scheduler} job {b.job} {b.state}" + (f" ({b.reason})" if b.reason else "")
        if self.lost is None:
            self.lost = (now, why)
            self._event("lost", b, why)
        # Parsl's strategy replaces it by itself when tasks are waiting (it polls as often): ask
        # for one only if, a poll later, nobody has, so the site comes back even with no task queued
        if not any(x.state not in ENDED for x in self.blocks) and self.replace_at is None:
            self.replace_at = now + self.poll_s

    def _replace(self, why: str) -> None:
        try:
            new = self.ex.scale_out_facade(1)
        except Exception as e:  # noqa: BLE001 - the scheduler refused: said, and tried again next poll
            log.warning("site %s: could not request a new block: %s", self.site, e)
            return
        for block in new:
            b = Block(block, str(self.ex.blocks_to_job_id.get(block)), "PENDING")
            self.known.add(block)
            self.blocks.append(b)
            self._event("requested", b, f"by fedgrid: {why}")

    def _new_blocks(self) -> None:
        """Blocks Parsl's scaling strategy requested (on demand, or replacing a lost one); the
        site's first block is not news."""
        for b in self.blocks:
            if b.block not in self.known:
                if self.known:
                    self._event("requested", b, "by Parsl's scaling strategy")
                self.known.add(b.block)

    def _drain(self, running: list[Block]) -> None:
        """Blocks with less walltime left than a round (plus a poll) take no new tasks; the next
        block is requested now unless one is already waiting or running besides them."""
        short = [b for b in running if b.left_s is not None and b.left_s < self.round_s + 2 * self.poll_s
                 and b.block not in self.draining]
        for b in short:
            self.draining.add(b.block)
            try:
                parsl_api.hold_block(self.ex, b.block)
            except Exception as e:  # noqa: BLE001 - the interchange may be gone at shutdown
                log.warning("site %s: could not hold block %s: %s", self.site, b.block, e)
            self._event("draining", b, f"{b.left_s:.0f} s of walltime left, less than a round "
                                       f"({self.round_s:g} s) and two polls")
        others = [b for b in self.blocks if b.state not in ENDED and b.block not in self.draining]
        if short and not others:
            self._replace("the running block is about to reach its walltime")
        for b in running:
            if b.block in self.draining and b not in short and self._idle(b.block):
                self._release(b)

    def _idle(self, block: str) -> bool:
        """No task is on this block's managers (asked of the interchange)."""
        try:
            managers = [m for m in self.ex.connected_managers() if str(m.get("block_id")) == block]
        except Exception:  # noqa: BLE001 - no answer: not known to be idle
            return False
        return all(not m.get("tasks") for m in managers)

    def _release(self, b: Block) -> None:
        """A drained block with nothing left on it is ended now: until its walltime it would hold
        its nodes, which the next block may be waiting for."""
        try:
            self.ex.provider.cancel([b.job])
        except Exception as e:  # noqa: BLE001 - it expires by itself anyway
            log.warning("site %s: could not end drained block %s: %s", self.site, b.block, e)
            return
        self._event("released", b, "drained and idle: ended before its walltime to free its nodes")

    def _event(self, kind: str, b: Block, detail: str) -> None:
        e = {"at": time.time(), "site": self.site, "event": kind, "block": b.block, "job": b.job,
             "state": b.state, "detail": detail}
        self.events.append(e)
        log.warning("site %s: %s: %s job %s (block %s) %s", self.site, kind, self.scheduler, b.job, b.block, detail)

    def view(self) -> dict[str, Any]:
        """For sites.json / `fedgrid status`."""
        return {"scheduler": self.scheduler, "blocks": [b.row() for b in self.blocks],
                "draining": sorted(self.draining), "unavailable": self.unavailable(), "events": self.events[-50:]}
