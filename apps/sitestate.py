"""Client state at the site: which object runs a client, and exactly which state it starts from.

A worker keeps one object per client (its data and model loaded once), but which worker runs a
client's task changes from round to round, and a run may be resumed anywhere. So the object is a
cache, never the truth: the truth is the client's state object in the site's store, one per
accepted version, content-addressed (``state/clients/client-NNNNN/<sha256>``), whose digest the
driver records only once it has accepted the update that produced it (checkpointed with the
round). Every task names the version to start from (``TrainTask.keep["have"]``):

- the cached object already holds it (the usual case: the same worker ran the client last) → used
  as it is, nothing read;
- it holds another version (another worker trained it since, or an attempt that was then dropped
  as late, failed or rejected) → the named version is read, verified and handed to the object's
  ``set_state``;
- the task names none (the client has no accepted state yet) but the object has trained → a new
  object is made, as on the client's first round.

An object is marked dirty while client code runs, so a train that raises or is killed half way
never passes for a clean version. Objects are kept per worker up to ``keep_clients`` (least
recently used evicted); an evicted client is rebuilt from its state like any other.

What is kept for a client is one tree: the client's own ``get_state()`` (``client``), the values
of its personal layers (``personal``: FedBN, FedPer; never sent, never aggregated), Ditto's
personal model (``ditto``), SCAFFOLD's control variate (``scaffold``) and top-k compression's
error-feedback residual (``residual``): one mechanism, so each is exact in the same way.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedgrid.apps import state as codec
from fedgrid.apps.records import StateDigest
from fedgrid.apps.store import Ref, Store, StoreError, fetch

DIRTY = "dirty"  # a version no store object has: client code ran on the object since it was clean
KEEP_CLIENTS = 64  # client objects a worker keeps by default (train.keep_clients)
FOLDER = "state/clients/client-{client:05d}"

Params = dict[str, np.ndarray]


@dataclass
class Kept:
    """What fedgrid keeps for one client between rounds, beside its model."""

    client: Any = None  # the client's own get_state()
    personal: Params = field(default_factory=dict)  # its personal layers (FedBN, FedPer)
    ditto: Params = field(default_factory=dict)  # Ditto's personal model
    scaffold: Params = field(default_factory=dict)  # SCAFFOLD's control variate c_i
    residual: Params = field(default_factory=dict)  # top-k compression's error feedback

    def tree(self) -> dict[str, Any]:
        return {"client": self.client, **{k: dict(getattr(self, k)) for k in SECTIONS}}

    @staticmethod
    def of(tree: Any) -> Kept:
        if not isinstance(tree, dict):
            raise codec.StateError("not a client state object (its tree is not a mapping)")
        arrays = {k: {n: np.asarray(v) for n, v in (tree.get(k) or {}).items()} for k in SECTIONS}
        return Kept(tree.get("client"), **arrays)


SECTIONS = ("personal", "ditto", "scaffold", "residual")  # fedgrid's own per-client arrays


@dataclass
class Slot:
    """One client's object in this worker and the state version it holds (None: fresh)."""

    client: Any
    version: str | None = None
    kept: Kept = field(default_factory=Kept)


_SLOTS: OrderedDict[tuple, Slot] = OrderedDict()
_LOCK = threading.Lock()


def slot(key: tuple, make: Callable[[], Any], bound: int = KEEP_CLIENTS) -> Slot:
    """This worker's slot for `key`, made on first use; the least recently used beyond `bound`
    are dropped (their clients are rebuilt from their state if they come back)."""
    with _LOCK:
        got = _SLOTS.get(key)
        if got is not None:
            _SLOTS.move_to_end(key)
            return got
    made = Slot(make())  # outside the lock: a client's constructor may load data for seconds
    with _LOCK:
        _SLOTS[key] = made
        while len(_SLOTS) > max(int(bound), 1):
            _SLOTS.popitem(last=False)
    return made


def drop(key: tuple) -> None:
    """Forget a client's object (its task was interrupted mid-way: the object may be half-changed)."""
    with _LOCK:
        _SLOTS.pop(key, None)


def cached() -> int:
    """Client objects this worker holds now."""
    return len(_SLOTS)


def stateful(client: Any) -> bool:
    """Whether a client keeps state of its own (defines ``get_state``)."""
    return callable(getattr(client, "get_state", None))


def enter(s: Slot, keep: dict[str, Any] | None, make: Callable[[], Any], call: Callable[..., Any]) -> Kept:
    """Bring the slot to the version the task names; returns what is kept for the client. `call`
    runs client code (its errors become the client's failure)."""
    want: StateDigest | None = (keep or {}).get("have")
    sha = want["sha256"] if want else None
    if s.version == sha and s.version != DIRTY:
        return s.kept
    if keep is None or want is None:  # (no keep: no version named either)
        s.client, s.kept, s.version = make(), Kept(), None
        return s.kept
    sha = want["sha256"]
    uri = f"{keep['store']}/{keep['folder']}/{sha}"
    try:
        kept = Kept.of(codec.decode(fetch(Ref(uri, sha, int(want["nbytes"])))))
    except (StoreError, codec.StateError) as e:
        # never a silent start-over: a worker that cannot see the store (a path not mounted there,
        # a lagging file system) would otherwise reset its clients every round
        raise StateUnreadable(f"client state version {sha[:12]} cannot be read at this site ({e}); every "
                              "worker of a stateful client's site must reach the store (store.url)") from None
    if kept.client is not None and stateful(s.client):
        s.version = DIRTY
        call(s.client.set_state, kept.client)
    s.kept, s.version = kept, sha
    return kept


def leave(s: Slot, keep: dict[str, Any], call: Callable[..., Any], started: float) -> StateDigest:
    """After an answer is ready: the client's new state written to the store under its digest;
    returns the digest for the driver, which makes it the client's version only if it accepts
    the update. Versions the driver no longer names are removed (`prune`)."""
    if stateful(s.client):
        s.kept.client = call(s.client.get_state)
    arrays = codec.encode(s.kept.tree())
    store = Store(keep["store"])
    ref = store.put_addressed(arrays, keep["folder"])
    s.version = ref.sha256
    prune(store, keep["folder"], {ref.sha256, *keep.get("keep", ())}, started - PRUNE_MARGIN_S)
    return {"sha256": ref.sha256, "nbytes": ref.nbytes}


PRUNE_MARGIN_S = 600.0  # clocks of the driver, the sites and a shared file system may disagree this much


def prune(store: Store, folder: str, names: set[str], before: float) -> None:
    """Remove the client's versions that the task's list does not name and that were written
    before `before` (this task's start, less a margin for clocks). Another attempt of the same
    client may still be running (a task of a site given up as down, a FedBuff flight past its
    deadline, a task of a crashed driver): whatever it writes, and whatever a newer attempt wrote
    that the driver has since accepted, is newer than this task and stays."""
    for name, written in store.times(folder).items():
        if name not in names and written < before:
            store.delete(f"{folder}/{name}")


class StateUnreadable(RuntimeError):
    """The version of a client's state that its task names cannot be read at its site."""


def with_personal(start: Params, kept: Kept) -> Params:
    """The params a client trains or evaluates from: the global ones, with its own values in its
    personal layers (the global model's values there on its first round)."""
    if not kept.personal:
        return start
    return OrderedDict((n, kept.personal.get(n, a)) for n, a in start.items())


def split_personal(params: Params, start: Params, names: list[str], kept: Kept) -> Params:
    """Keep the trained personal layers at the site; what leaves has the global values there, so
    nothing personal is sent and the server's mean of those layers is the global value itself."""
    if not names:
        return params
    kept.personal = OrderedDict((n, np.array(params[n], copy=True)) for n in names if n in params)
    return OrderedDict((n, start[n] if n in kept.personal else a) for n, a in params.items())
