"""TrainTask: what the driver sends a client's site for one round (docs/ARCHITECTURE.md, Contracts).

One typed record instead of a dict of keys spread over the driver and four site modules: the
driver builds it in one place (:meth:`fedgrid.flow.rounds.tasks.Tasks.train`), and the site reads
its fields by name. It is pickled to the site with the rest of the app's arguments, so it holds only
plain data: numbers, strings, dicts of them, numpy arrays or a store `Ref`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedgrid.apps.guard import Guard
from fedgrid.apps.records import ClientCode, CompressSettings, LocalDp, TrainSettings
from fedgrid.apps.store import Ref


@dataclass
class TrainTask:
    """One client's work for one round.

    `train` is the job's train block with the driver's per-client instructions merged in
    (``prox_mu``, ``scaffold``, a paced ``steps`` budget, ``secagg``: apps/records.py
    `TrainSettings`). `params` is the global model:
    arrays inline, a `Ref` into the store, or None for a warm-up task. The optional blocks are set
    only when the job uses the feature: a fault drill (`faults`), the data plane (`store`,
    `ref_above`, `update_key`), local DP (`dp`), update compression (`compress`), client state and
    personalization (`keep`, see :mod:`fedgrid.apps.sitestate`).
    """

    client: int
    site: str
    round: int
    clients: int  # clients in the whole job: the partitioners need it to find this client's share
    seed: int
    data: dict[str, Any]  # the data block as this client's site sees it (the job's, the site's overrides in)
    code: ClientCode  # the client code: {"path": "module:Class", "options": {...}} (see client_code)
    train: TrainSettings
    params: dict[str, np.ndarray] | Ref | None = None
    submitted_at: float = 0.0
    attempt: int = 1
    draw: tuple[int, ...] = ()  # an asynchronous client may train twice from one global model: tells them apart
    faults: dict[str, Any] | None = None
    store: str | None = None
    ref_above: int | None = None  # updates larger than this go back through the store
    update_key: str | None = None
    dp: LocalDp | None = None
    compress: CompressSettings | None = None
    sum_at_site: bool = False  # round.aggregate: site: the update (and its count) goes to the site's store
    # the job's round target and the round it was set at, each time it changed (``--rounds +N``
    # raises it): ((0, 10), (10, 13)); a schedule over rounds (Work.schedule) continues across them
    horizon: tuple[tuple[int, int], ...] = ()
    # client state (apps/sitestate.py): the store and folder of this client's versions, the version
    # to start from ("have": {sha256, nbytes} or None), versions to keep, personal layers, Ditto
    keep: dict[str, Any] | None = None
    # how the site contains the client's code: time limit, black box, output cap (apps/guard.py)
    guard: Guard | None = None
    # set by the driver when Parsl runs the task again after its worker was lost: only then may a
    # dead worker's black box name it (apps/blackbox.py), a lookup not worth making on every task
    relaunched: bool = False


def model_spec(name: str, input_shape: tuple[int, ...] | list[int], num_classes: int,
               kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the built-in client needs to build the job's model: the architecture and its shapes."""
    return {"name": name, "input_shape": list(input_shape), "num_classes": num_classes, "kwargs": dict(kwargs or {})}


def client_code(path: str, options: dict[str, Any] | None = None) -> ClientCode:
    """Which client class a site runs (``module:Class``) and the options its Context carries."""
    return {"path": path, "options": dict(options or {})}
