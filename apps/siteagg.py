"""The site aggregation app (``round.aggregate: site``): one per site per round, on the site's own
executor, so only one partial per site crosses the wide-area link.

The site's clients write their updates, with their example counts, to the site's store (a path the
site reads fast: node-local disk or the cluster's parallel file system). The app depends, in the
round's DAG, on a future the driver settles when every client of the site has answered or failed,
or at the site's deadline (a little under the round's, so the partial reaches the driver in
time), whichever comes first: Parsl starts it only then, so it never holds a worker the site's
clients still need. It reads what is there (waiting `wait_s` more for a shared file system to show
an object a client reported written), checks each update as the driver would (names, shapes,
dtypes, finite values, the example count within what the driver allows that client, the norm
bound), and returns the partial: the example-weighted mean (summed in float64, sent in the model's
own dtype, so a partial is one update's worth of bytes), the example count, which clients it
holds and why it left the others out. A
client that failed or is late simply has no object by the deadline; it costs that client only.

The driver combines the partials as it would combine the clients (the mean of the site means
weighted by their examples is the mean over all clients), so a mean-based strategy sees the same
mean as in flat aggregation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedgrid.apps.store import Ref, Store, StoreError
from fedgrid.apps.update import ClientUpdate

EXAMPLES = "__fedgrid_examples__"  # the example count, stored beside a client's params for its site


@dataclass
class SiteAggTask:
    """What the driver tells a site's aggregator: whose updates to wait for (their keys in the site
    store), the global params they are checked against (inline or a Ref), each client's example
    limit and the norm bound, until when to wait, and where the partial goes if it is large."""

    site: str
    round: int
    keys: dict[int, str]
    store: str
    params: Any
    max_examples: dict[int, int]
    wait_s: float = 2.0
    max_norm: float | None = None
    out_store: str | None = None
    out_key: str | None = None
    ref_above: int | None = None


@dataclass
class SitePartial:
    """One site's round: sum_c n_c x_c / sum_c n_c (the model's dtypes; inline or by `ref`),
    sum_c n_c, the clients in it, the ones left out with why, and the bytes its clients' updates
    took inside the site."""

    site: str
    round: int
    examples: int
    clients: list[int]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    ref: Ref | None = None
    left_out: dict[int, str] = field(default_factory=dict)
    bytes_in_site: int = 0
    seconds: float = 0.0


def aggregate_site(task: SiteAggTask, settled: Any = None) -> SitePartial:  # noqa: ARG001 - the DAG edge
    """`settled`: the driver's future for "the site's clients are done", passed so that Parsl
    starts this app only once it resolves; its value is not used."""
    from fedgrid.apps.train import global_params

    t0 = time.time()
    like = global_params(task.params)
    store = Store(task.store)
    total = {k: np.zeros(v.shape, np.float64) for k, v in like.items()}
    out = SitePartial(task.site, task.round, 0, [])
    pending = dict(task.keys)
    end = t0 + task.wait_s
    while pending:
        for c, key in list(pending.items()):
            got = _read(store, key)
            if got is None:
                continue
            del pending[c]
            store.delete(key)  # read once; the round is over for it at this site
            _add(task, c, got, like, total, out)
        if pending and time.time() >= end:
            break
        if pending:
            time.sleep(0.05)
    for c in pending:
        out.left_out[c] = f"late: no update at site {task.site}'s aggregator by the site's deadline"
    return _finish(task, _mean(total, out.examples, like), out, t0)


def _read(store: Store, key: str) -> tuple[dict[str, np.ndarray], int] | None:
    try:
        got = store.get(key)
    except StoreError:
        return None
    if got is None:
        return None
    return dict(got), sum(int(a.nbytes) for a in got.values())


def _add(task: SiteAggTask, c: int, got: tuple[dict[str, np.ndarray], int], like: dict[str, np.ndarray],
         total: dict[str, np.ndarray], out: SitePartial) -> None:
    """Check one client's stored update as the driver would; add n * x to the sum, or say why not."""
    from fedgrid.flow.rounds.validate import InvalidUpdate, check

    params, nbytes = got
    out.bytes_in_site += nbytes
    n = params.pop(EXAMPLES, None)
    try:
        count = int(n) if n is not None and np.ndim(n) == 0 and np.issubdtype(np.asarray(n).dtype, np.integer) else 0
        if not 0 < count <= task.max_examples.get(c, 0):
            raise InvalidUpdate(f"rejected: num_examples {n!r} is not in [1, {task.max_examples.get(c, 0)}]")
        check(ClientUpdate(client=c, site=task.site, round=task.round, num_examples=count, params=params),
              like, task.max_norm)
    except InvalidUpdate as e:
        out.left_out[c] = f"{e} (at site {task.site}'s aggregator)"
        return
    for k, a in params.items():
        total[k] += count * np.asarray(a, np.float64)
    out.examples += count
    out.clients.append(c)


def _mean(total: dict[str, np.ndarray], n: int, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The site's mean in each tensor's own float dtype (integer buffers stay float64 means: the
    driver rounds them once, after combining the sites, as flat aggregation does)."""
    if not n:
        return {}
    return {k: (v / n).astype(like[k].dtype) if np.issubdtype(like[k].dtype, np.floating) else v / n
            for k, v in total.items()}


def _finish(task: SiteAggTask, total: dict[str, np.ndarray], out: SitePartial, t0: float) -> SitePartial:
    """The partial travels inline when small, else through the driver's store (like an update)."""
    out.clients.sort()
    above = task.ref_above
    if out.examples and above is not None and task.out_store and sum(a.nbytes for a in total.values()) > above:
        out.ref = Store(task.out_store).put(total, task.out_key)
    elif out.examples:
        out.params = total
    out.seconds = time.time() - t0
    return out
