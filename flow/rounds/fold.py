"""The streaming fold: a mean-based round aggregated as its updates are accepted (issue 18).

A strategy whose next model depends on the updates only through their example-weighted mean
(``Strategy.mean_based``) does not need every update at once. Here each accepted update is folded
into one running sum of weighted deltas, ``acc += w_i * (x_i - G)`` with ``w_i = num_examples *
scale``, and its params are dropped; the update's envelope (client, counts, metrics, timings, bytes)
stays for the round's row. At aggregation the strategy gets ONE contribution, the weighted mean
``G + acc / sum(w)`` with the round's total example count, as secure aggregation hands it one.
The driver then holds the global params, the accumulator and a bounded piece of one update,
instead of every update of the round (8 x 1 GB at 250 M parameters).

Precision: deltas are summed in the model's float dtype (float32: half the bytes of a float64
accumulator), so the error is relative to the deltas, not to the weights, and the result matches
`weighted_mean` to well within 1e-6 on a realistic model. Integer buffers (BatchNorm counters) are
summed in float64 and rounded once, at the end, as `weighted_mean` does.

Verification: an update by reference is read from the store in pieces (apps/store.Reader),
checked piece by piece by the same rules `validate.check` applies to a whole update (apps/checks.py
`Rules`: names, shapes, dtypes, finite values, the norm bound), and written to a private, unlinked
spill file. Only once the whole object has matched its size and sha256 and passed every check is
it folded, from the spill: what is folded is what was verified, however the store object changes
afterwards, and a rejected update never touches the accumulator.

Determinism: floating-point sums depend on their order, and answers arrive in any order. Updates
are therefore folded in client order: an accepted update waits (in its spill) until every client
before it in the round has settled (the gather's ``on_result``), so the same accepted set always
gives the same bits, and a resumed run repeats an uninterrupted one exactly.

When it is not used (`applies`: the one place that decides): strategies that need every update
(median, trimmed mean, Krum, FedNova, SCAFFOLD), central or local DP (each update is clipped or
re-weighted first), secure aggregation (its own single contribution) and ``round.absent: reuse``
(the client memory keeps the updates). Late updates carried into the round (``round.late:
carry``) are folded at the end with their scale.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedgrid.apps import checks
from fedgrid.apps.checks import Rules
from fedgrid.apps.codec import is_float
from fedgrid.apps.store import PIECE, Reader, Ref
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.rounds import validate

if TYPE_CHECKING:
    from fedgrid.flow.config import Job
    from fedgrid.flow.privacy.dp import Privacy
    from fedgrid.flow.privacy.secagg import SecureAggregation
    from fedgrid.flow.strategies.base import Strategy

Params = dict[str, np.ndarray]
# elements per step of the fold: its temporaries stay in cache and numpy's per-call cost stays
# small (the fastest on this VM: bench/bigmodel.py --kernel)
CHUNK = 1 << 17


class FoldDriver(Protocol):
    """What the fold's decision (and two-tier aggregation's weighing) reads of the run's driver
    (flow/rounds/driver.py Driver): a Protocol, so the round modes and tests may hand in any
    object that has these."""

    @property
    def job(self) -> Job: ...

    @property
    def strategy(self) -> Strategy: ...

    @property
    def privacy(self) -> Privacy | None: ...

    @property
    def secagg(self) -> SecureAggregation | None: ...


def applies(drv: FoldDriver) -> bool:
    """Whether this run's rounds fold their updates as they arrive, or keep them all (old path)."""
    from fedgrid.flow.strategies.base import Strategy

    s, rs = drv.strategy, drv.job.round
    # (a strategy that checks fields of each answer does so after the accept, i.e. after the fold)
    checks = type(s).check_answer is not Strategy.check_answer
    return (bool(s.mean_based) and not s.asynchronous and not checks and drv.privacy is None and drv.secagg is None
            and rs.absent != "reuse")


def _acc_dtype(g: np.ndarray) -> np.dtype:
    return np.result_type(g.dtype, np.float32) if is_float(g) else np.dtype(np.float64)


class Sum:
    """``sum_i w_i * (x_i - G)`` over folded params, per tensor, and ``sum_i w_i``."""

    def __init__(self, like: Params):
        self.like = like
        self.acc: Params | None = None  # allocated at the first fold (a failed attempt allocates none)
        self.weight = 0.0
        self.examples = 0
        self._tmp: dict[np.dtype, np.ndarray] = {}

    def _start(self) -> Params:
        if self.acc is None:
            self.acc = OrderedDict((k, np.zeros(g.shape, _acc_dtype(g))) for k, g in self.like.items())
        return self.acc

    def add(self, pieces: Iterator[tuple[str, int, np.ndarray]], weight: float, examples: int) -> None:
        """Fold one contribution given as (tensor, first element, elements) pieces covering it."""
        acc = self._start()
        for name, start, x in pieces:
            a = acc[name].reshape(-1)
            tmp = self._tmp.setdefault(a.dtype, np.empty(CHUNK, a.dtype))
            fold_into(a[start:start + x.size], self.like[name].reshape(-1)[start:start + x.size],
                      x.reshape(-1), a.dtype.type(weight), tmp)
        self.weight += weight
        self.examples += examples

    def mean(self, rnd: int, site: str = "fold") -> ClientUpdate:
        """The weighted mean as one contribution (float tensors in the accumulator's dtype, integer
        buffers as float64 means that the strategy rounds); the accumulator becomes it, in place."""
        if self.acc is None or self.weight <= 0:
            raise ValueError("cannot aggregate zero updates")
        inv, out = 1.0 / self.weight, OrderedDict()
        for name, g in self.like.items():
            a = self.acc[name]
            if is_float(g):
                a *= a.dtype.type(inv)
                a += g
            else:
                a = a * inv + g
            out[name] = a
        # (the round's row keeps this object while the next round runs: it must not keep the old model)
        self.acc, self.like = None, {}
        return ClientUpdate(client=-1, site=site, round=rnd, num_examples=self.examples, params=out)


def fold_into(acc: np.ndarray, g: np.ndarray, x: np.ndarray, w: np.generic, tmp: np.ndarray) -> None:
    """``acc += w * (x - g)`` over flat arrays, CHUNK elements at a time, in the accumulator's dtype."""
    for s in range(0, x.size, CHUNK):
        e = min(s + CHUNK, x.size)
        t = tmp[:e - s]
        np.subtract(x[s:e], g[s:e], out=t, dtype=t.dtype, casting="unsafe")
        t *= w
        acc[s:e] += t


class Spill:
    """A verified object's arrays in a private, unlinked temporary file (no other process can open
    it), read back piece by piece when it is folded."""

    def __init__(self, ref: Ref, rules: Rules):
        """`rules`: the shared rules (apps/checks.py) for a client's update, or with
        ``partial=True`` for a site's partial, applied as the object is read."""
        self.file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 - closed by fold or close
        try:
            with Reader(ref) as r:
                rules.header((e.name, e.shape, e.dtype) for e in r.entries)
                self.entries = r.entries
                for e, start, x in r.arrays():  # (the last step checks the size and sha256)
                    rules.piece(e.name, start, x)
                    self.file.write(x.data.cast("B") if x.ndim else x.tobytes())
            rules.end()
        except BaseException:
            self.close()
            raise

    def pieces(self) -> Iterator[tuple[str, int, np.ndarray]]:
        self.file.seek(0)
        buf = bytearray(PIECE)
        for e in self.entries:
            step = max(PIECE // max(e.dtype.itemsize, 1), 1) * e.dtype.itemsize
            for off in range(0, e.nbytes, step):
                mv = memoryview(buf)[:min(step, e.nbytes - off)]
                got = 0
                while got < len(mv):
                    got += self.file.readinto(mv[got:]) or _short()
                yield e.name, off // e.dtype.itemsize, np.frombuffer(mv, dtype=e.dtype)

    def close(self) -> None:
        self.file.close()


def _short() -> int:
    raise OSError("the fold's spill file ended early")


Held = tuple[Spill | Params, float, int]  # an accepted update waiting to be folded: params, weight, examples


class Fold:
    """One attempt of a flat round: accepted updates held (spilled, or in memory when they came
    inline) until every client before them has settled, then folded in client order."""

    def __init__(self, like: Params, rnd: int, clients: list[int]):
        self.sum, self.rnd = Sum(like), rnd
        self.order = sorted(clients)
        self.next = 0  # index in `order` of the first client not yet folded or passed over
        self.held: dict[int, Held] = {}
        self.settled: set[int] = set()
        self.folded: list[int] = []
        self.closed = False
        self.result: ClientUpdate | None = None
        self._lock = threading.Lock()

    def accept(self, u: Any, client: int, site: str, rnd: int, like: Params, area: str | None,
               max_norm: float | None = None, budget: Callable[[int], int] | None = None,
               max_examples: int = validate.MAX_EXAMPLES) -> ClientUpdate:
        """`validate.accept` for a folded round (same arguments): the envelope, then the params
        checked as they are read into a spill (by reference) or as they are (inline); the update
        is returned without its params, which wait for their turn to be folded."""
        u = validate.as_update(validate.envelope(u, client, site, rnd, area, budget, max_examples))
        if u.ref is not None and not u.params and u.codec == "none":
            spill = Spill(u.ref, Rules(like, max_norm))
            try:  # the rest of validate.check's rules (counts, steps, metrics); the params: as they were read
                u.metrics = checks.update(u.params, u.num_examples, u.extras, u.metrics, like, with_params=False)
            except BaseException:
                spill.close()
                raise
            self._hold(client, (spill, u.num_examples * u.scale, u.num_examples))
            return u
        # inline or compressed: whole in memory already (small, or decoded against the model)
        u = validate.check(u.resolve().decode(like), like, max_norm)
        self._hold(client, (u.params, u.num_examples * u.scale, u.num_examples))
        u.wire_nbytes, u.params = u.nbytes(), {}
        return u

    def _hold(self, client: int, held: Held) -> None:
        with self._lock:
            if not self.closed and client not in self.settled:
                self.held[client] = held
                return
        _close(held)  # the gather gave up on it (its read outlived the deadline): never folded

    def observe(self, on_result: Callable[[int, bool], None] | None) -> Callable[[int, bool], None]:
        """The gather's on_result, wrapped: a settled client may let the next ones be folded."""
        def settled(client: int, ok: bool) -> None:
            self.settle(client, ok)
            if on_result is not None:
                on_result(client, ok)
        return settled

    def settle(self, client: int, ok: bool) -> None:
        """The gather is done with `client`: accepted (`ok`) or not; fold the settled prefix."""
        with self._lock:
            self.settled.add(client)
            dropped = None if ok else self.held.pop(client, None)
        if dropped is not None:
            _close(dropped)
        while self.next < len(self.order) and self.order[self.next] in self.settled:
            self._fold(self.order[self.next])
            self.next += 1

    def _fold(self, client: int) -> None:
        with self._lock:
            held = self.held.pop(client, None)
        if held is None:
            return
        item, weight, examples = held
        try:
            self.sum.add(item.pieces() if isinstance(item, Spill) else _pieces(item, self.sum.like), weight, examples)
        finally:
            _close(held)
        self.folded.append(client)

    def finish(self, updates: list[ClientUpdate]) -> ClientUpdate:
        """The round's one contribution, once the gather is over and late updates are carried into
        `updates`: the accepted rest folded in client order, then the carried ones with their
        scale; whatever the gather did not accept is dropped unread."""
        if self.result is not None:
            return self.result
        accepted = {u.client for u in updates}
        with self._lock:
            self.closed = True
            for c in [c for c in self.held if c not in accepted]:
                _close(self.held.pop(c))
        for c in self.order[self.next:]:
            self._fold(c)
        self.next = len(self.order)
        for u in sorted(updates, key=lambda u: u.client):
            if u.client not in self.folded and u.params:  # carried in from an earlier round
                self.sum.add(_pieces(u.params, self.sum.like), u.num_examples * u.scale, u.num_examples)
                u.wire_nbytes, u.params = u.nbytes(), {}
                self.folded.append(u.client)
        if sorted(self.folded) != sorted(accepted):
            raise RuntimeError(f"round {self.rnd}: folded clients {sorted(self.folded)[:8]} are not the accepted "
                               f"{sorted(accepted)[:8]}")
        self.result = self.sum.mean(self.rnd)
        return self.result


def sites(like: Params, rnd: int, partials: list[tuple[ClientUpdate, Spill | None]]) -> ClientUpdate:
    """``round.aggregate: site``: the sites' partial means (each weighted by its examples; by
    reference: from its spill) folded, in the order given, into the one mean over all their clients."""
    total = Sum(like)
    for c, spill in partials:
        try:
            total.add(spill.pieces() if spill else _pieces(c.params, like), float(c.num_examples), c.num_examples)
        finally:
            if spill is not None:
                spill.close()
        c.params = {}
    return total.mean(rnd, ",".join(c.site for c, _ in partials))  # (the sites in it, for the log)


def _pieces(params: Mapping[str, np.ndarray], like: Params) -> Iterator[tuple[str, int, np.ndarray]]:
    return ((k, 0, np.asarray(params[k])) for k in like)


def _close(held: Held) -> None:
    if isinstance(held[0], Spill):
        held[0].close()
