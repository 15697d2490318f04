"""The site aggregation app (``round.aggregate: site``): one per site per round, on the site's own
executor, so only one partial per site crosses the wide-area link.

The site's clients write their updates to the site's store (a path the site reads fast:
node-local disk or the cluster's parallel file system). The app depends, in the round's DAG, on a
future the driver settles once it has checked the answer of every client of the site (or at the
site's deadline, a little under the round's, so the partial reaches the driver in time). Parsl
starts the app only then, so it never holds a worker the site's clients still need, and the
future's value is what the driver accepted: each client's example count and local steps. The app
weighs by those, never by anything stored beside an update, so one client's lie about its count
costs that client and not its site's partial.

It reads each accepted client's update (waiting `wait_s` more for a shared file system to show an
object a client reported written), checks it by the rules the driver applies (apps/checks.py:
names, shapes, dtypes, finite values, the norm bound) and returns the partial: the site's weighted
mean in the model's own dtype (summed in float64), which clients it holds and why it left the
others out. What the weights are is the strategy's (`weigh`): example counts for the mean-based
rules, counts over local steps for FedNova, one per client under differential privacy (each delta
clipped to `clip` here first). SCAFFOLD's control-variate deltas are averaged beside the model
(``scaffold_dc/<name>``). Under secure aggregation the updates are masked vectors in Z_2^64: the
app adds them and learns nothing about any one client; the driver removes the masks from the
site's sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedgrid.apps import checks
from fedgrid.apps.checks import InvalidUpdate
from fedgrid.apps.store import Ref, Store, StoreError

CONTROL = "scaffold_dc/"  # SCAFFOLD's c_i+ - c_i, stored beside a client's params for its site
MASKED = "masked"  # a secure-aggregation client's one vector (apps/secagg.py)


@dataclass
class SiteAggTask:
    """What the driver tells a site's aggregator: where its clients' updates are (keys in the site
    store), the global params they are checked against (inline or a Ref), how to weigh them, the
    norm bound, how long to wait for a lagging file system, and where a large partial goes."""

    site: str
    round: int
    keys: dict[int, str]
    store: str
    params: dict[str, np.ndarray] | Ref
    weigh: Literal["examples", "steps", "equal"] = "examples"
    clip: float | None = None
    control: bool = False
    masked: int = 0  # secure aggregation: the masked vector's length (0: plain updates)
    wait_s: float = 2.0
    max_norm: float | None = None
    out_store: str | None = None
    out_key: str | None = None
    ref_above: int | None = None


@dataclass
class SitePartial:
    """One site's round: the weighted mean of its clients (the model's dtypes; inline or by `ref`)
    or, masked, their sum; their example count, the clients in it, the ones left out with why, and
    the bytes its clients' updates took inside the site."""

    site: str
    round: int
    examples: int
    clients: list[int]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    ref: Ref | None = None
    left_out: dict[int, str] = field(default_factory=dict)
    bytes_in_site: int = 0
    seconds: float = 0.0


def weight(weigh: str, examples: int, steps: int) -> float:
    """A client's weight in its site's mean; the driver computes the same from its own records."""
    return float(examples) / max(int(steps), 1) if weigh == "steps" else 1.0 if weigh == "equal" else float(examples)


def aggregate_site(task: SiteAggTask, settled: dict[int, tuple[int, int]] | None = None) -> SitePartial:
    """`settled`: the driver's future for "the site's clients are checked", passed so that Parsl
    starts this app only once it resolves; its value is {client: (examples, steps)} of the clients
    the driver accepted, the only ones read."""
    from fedgrid.apps.train import global_params

    t0 = time.time()
    accepted = _accepted(settled, task.keys)
    like = global_params(task.params)
    acc = _Sum(task, like)
    pending = {c: task.keys[c] for c in accepted}
    store = Store(task.store)
    end = t0 + task.wait_s
    while pending:
        for c, key in list(pending.items()):
            got = _read(store, key)
            if got is None:
                continue
            del pending[c]
            store.delete(key)  # read once; the round is over for it at this site
            acc.add(c, *accepted[c], *got)
        if pending and time.time() >= end:
            break
        if pending:
            time.sleep(0.05)
    for c in pending:
        acc.out.left_out[c] = f"late: no update at site {task.site}'s aggregator by the site's deadline"
    return _finish(task, acc.result(), acc.out, t0)


def _accepted(settled: dict[int, tuple[int, int]] | None, keys: dict[int, str]) -> dict[int, tuple[int, int]]:
    """The driver's {client: (examples, steps)}, limited to this site's clients."""
    if not isinstance(settled, dict):
        return {}
    return {int(c): (int(n), int(s)) for c, (n, s) in settled.items() if c in keys}


def _read(store: Store, key: str) -> tuple[dict[str, np.ndarray], int] | None:
    try:
        got = store.get(key)
    except StoreError:
        return None
    if got is None:
        return None
    return dict(got), sum(int(a.nbytes) for a in got.values())


class _Sum:
    """The site's running weighted sum (float64), or its ring sum of masked vectors."""

    def __init__(self, task: SiteAggTask, like: dict[str, np.ndarray]):
        self.task, self.like = task, like
        self.trainable = [k for k, v in like.items() if np.issubdtype(v.dtype, np.floating)]
        self.out = SitePartial(task.site, task.round, 0, [])
        self.w = 0.0
        if task.masked:
            self.total: dict[str, np.ndarray] = {MASKED: np.zeros(task.masked, np.uint64)}
        else:
            self.total = {k: np.zeros(v.shape, np.float64) for k, v in like.items()}
            if task.control:
                self.total.update({CONTROL + k: np.zeros(like[k].shape, np.float64) for k in self.trainable})

    def add(self, c: int, examples: int, steps: int, params: dict[str, np.ndarray], nbytes: int) -> None:
        """Check one client's stored update as the driver would; add it in, or say why not."""
        self.out.bytes_in_site += nbytes
        try:
            params = self._checked(c, examples, params)
        except InvalidUpdate as e:
            self.out.left_out[c] = f"{e} (at site {self.task.site}'s aggregator)"
            return
        if self.task.masked:
            self.total[MASKED] += params[MASKED]  # wraps mod 2^64, as the masks need
        else:
            w = weight(self.task.weigh, examples, steps)
            for k, a in params.items():
                self.total[k] += (w if not k.startswith(CONTROL) else 1.0) * np.asarray(a, np.float64)
            self.w += w
        self.out.examples += examples
        self.out.clients.append(c)

    def _checked(self, c: int, examples: int, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The shared rules (apps/checks.py): a masked vector; or the model's tensors (names,
        shapes, dtypes, finite, the norm bound) with SCAFFOLD's control deltas for every float
        tensor beside them; the example count the driver accepted."""
        from fedgrid.apps.privacy import clip_and_noise

        if self.task.masked:
            checks.masked(params, self.task.masked)
            return params
        control = {k[len(CONTROL):]: params.pop(k) for k in [k for k in params if k.startswith(CONTROL)]}
        if self.task.control:
            checks.control(control, self.like, complete=True)
        elif control:
            raise InvalidUpdate("rejected: SCAFFOLD control deltas in a round that sent no control variate")
        checks.examples(examples)
        checks.Rules(self.like, self.task.max_norm).params(params)
        if self.task.clip is not None:  # central DP: each client's delta bounded before it is summed
            params, _ = clip_and_noise(params, self.like, self.task.clip, 0.0, np.random.default_rng())
        return {**params, **{CONTROL + k: v for k, v in control.items()}}

    def result(self) -> dict[str, np.ndarray]:
        """The masked sum as it is; otherwise the mean in each tensor's own float dtype (integer
        buffers stay float64 means: the driver rounds them once, after combining the sites, as flat
        aggregation does), the control deltas averaged over the clients."""
        if not self.out.clients:
            return {}
        if self.task.masked:
            return self.total
        k = len(self.out.clients)
        return {n: (v / k).astype(np.float32) if n.startswith(CONTROL) else
                (v / self.w).astype(self.like[n].dtype) if np.issubdtype(self.like[n].dtype, np.floating) else
                v / self.w for n, v in self.total.items()}


def _finish(task: SiteAggTask, total: dict[str, np.ndarray], out: SitePartial, t0: float) -> SitePartial:
    """The partial travels inline when small, else through the driver's store (like an update)."""
    out.clients.sort()
    above = task.ref_above
    if out.clients and above is not None and task.out_store and task.out_key is not None \
            and sum(a.nbytes for a in total.values()) > above:
        out.ref = Store(task.out_store).put(total, task.out_key)
    elif out.clients:
        out.params = total
    out.seconds = time.time() - t0
    return out
