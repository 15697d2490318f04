"""The records that cross between the driver and a site, and the round row the driver stores.

Before these types, every one of them was a ``dict[str, Any]`` whose keys were an unwritten
protocol between a writer in `flow/` and readers in `apps/` (or the other way round): a key
renamed on one side failed only at run time, at a site. Each record is written down here once, in
`apps/` because both sides import it and `apps/` imports nothing of `flow/` (the sites install
only `apps/`'s dependencies; tests/unit/test_layering.py keeps it so).

Most of them are TypedDicts, not dataclasses, on purpose; at run time they are the same plain dicts
as before, so nothing on the wire, in a checkpoint or in the rounds table changes:

- what a site sends (`Extras`, the secure-aggregation replies) is untrusted: the driver receives
  whatever the site pickled and has to check it key by key (apps/checks.py, flow/rounds/validate.py)
  before it may call it an `Extras`; the type says what a checked one is;
- `TrainSettings` is the client API's ``Work.settings`` and `ClientCode` is how a user's class is
  named: users' code reads and copies them as dicts (``{**work.settings, "epochs": 1}``);
- `RoundRow` is a row of rounds.parquet and the checkpoint's JSON copy of it, and its client-metric
  columns are named by the clients at run time (`set_columns`);
- `CompressSettings` and the secure-aggregation requests are built as literal dicts by callers of
  the site functions (tests, benchmarks) as well as by the driver.

`LocalDp` is built once per run by the driver and only read at the site: a frozen dataclass with
slots, pickled with its task. None of them holds a closure, so the C pickler carries every task
(apps/wire.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast

import numpy as np

Arrays = dict[str, np.ndarray]


# -- what the driver tells a client (TrainTask.train: the client API's Work.settings) ---------------

class ScaffoldInstruction(TypedDict):
    """SCAFFOLD's server control variate ``c`` (float32, trainable params only)."""

    c: Arrays


class _SecaggRun(TypedDict):
    run_id: str  # the run's name and a hash of its directory: the sites' key folder


class SecaggOptions(_SecaggRun, total=False):
    """One secure-aggregation step's instructions (apps/secagg.py); which keys a step reads:
    every step `run_id`, `nonce`, `key_dir`; ``share``: `pks`, `t`; ``mask`` (inside the train
    task, as ``TrainSettings.secagg``): `pks`, `names`, `frac_bits`, `t`; ``unmask``: `pks`,
    `inbox`, `survivors`, `dropped`."""

    step: Literal["keys", "share", "mask", "unmask"]
    nonce: str  # unguessable, names the key folder: another local user cannot take it first
    key_dir: str | None  # where the site keeps a round's secrets (None: its temp dir)
    frac_bits: int  # fixed point in Z_2^64
    pks: dict[int, bytes]  # the masking group's public keys
    t: int  # the Shamir threshold of the group
    names: list[str]  # the float tensors that are masked, in order
    inbox: dict[int, bytes]  # the encrypted share pairs addressed to this client, by sender
    survivors: list[int]  # clients whose masked update arrived
    dropped: list[int]  # clients of the group whose update did not


class Instructions(TypedDict, total=False):
    """What the driver adds to the job's train block for one client and round: the strategy's
    `configure` (FedProx's ``prox_mu``, SCAFFOLD's ``scaffold``), ``round.pace: deadline``'s step
    budget, and secure aggregation's masking options."""

    prox_mu: float
    scaffold: ScaffoldInstruction | None
    steps: int | None  # paced: optimiser steps instead of `epochs` epochs
    secagg: SecaggOptions


class TrainSettings(Instructions, total=False):
    """The train block a task carries: the job's ``train:`` (flow/config/schema.py TrainSpec,
    dumped), the driver's `Instructions` merged in, and what the site adds before the client's
    code sees it as ``Work.settings`` (FedRep's head, Ditto's second call)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    threads: int
    device: str
    keep_clients: int
    timeout_s: float | None
    output_mb: float
    # set at the site (apps/train.py): Ditto's personal model, FedRep's head-first round
    personal: bool
    head_epochs: int
    personal_layers: list[str]


class _ClientPath(TypedDict):
    path: str  # "module:Class"


class ClientCode(_ClientPath, total=False):
    """Which client class a site runs and the options its Context carries (apps/task.py
    `client_code`); the driver adds the job's ``client.python_path``, a Flower app's module
    (``imports``) and a fine-tuning run's frozen ``base`` (name, sha256, path)."""

    options: dict[str, Any]
    python_path: list[str]
    imports: list[str]
    base: dict[str, Any]


class _Codec(TypedDict):
    codec: str  # apps/codec.py CODECS


class CompressSettings(_Codec, total=False):
    """``compression.up`` as a task carries it (flow/rounds/tasks.py `_compression`)."""

    topk_fraction: float
    dense_below: int  # tensors smaller than this go dense
    feedback: bool  # top-k's residual is kept in the client's state
    exact: list[str] | None  # statistics and counters, sent whole and exact (None: inferred at the site)


@dataclass(frozen=True, slots=True)
class LocalDp:
    """Local differential privacy at the site: clip each update to `clip`, add Gaussian noise of
    std `std` (``noise_multiplier * clip``) before it leaves (apps/privacy.py)."""

    clip: float
    std: float


# -- what a client sends back beside its params (ClientUpdate.extras) -------------------------------

class StateDigest(TypedDict):
    """A stored object named by its content: a client state version (apps/sitestate.py)."""

    sha256: str
    nbytes: int


class Extras(TypedDict, total=False):
    """``ClientUpdate.extras``. From a site (checked by the driver's envelope and apps/checks.py
    before anything reads them): `steps`, `worker`, `batch_job`, `cold`, `state`,
    `scaffold_delta_c`. Built by the driver for a contribution that stands for several clients
    (flow/rounds/twotier.py, a site's partial): `clients`, `nova`, `scaffold_mean`,
    `scaffold_clients`."""

    steps: int  # local optimiser steps taken (FedNova weighs by them; bounded by the budget sent)
    worker: str | None  # host:pid of the worker that trained it (a label for the rounds table)
    batch_job: str | None  # the Slurm / PBS job the worker ran in
    cold: bool  # the worker had to build the client's model in this task (not warmed)
    state: StateDigest  # the client state version it wrote: the client's if the update is aggregated
    scaffold_delta_c: Arrays  # SCAFFOLD: c_i+ - c_i, per trainable tensor
    clients: int  # a site's partial: how many clients it holds (its weight under DP)
    nova: tuple[float, float]  # FedNova over a site's clients: (sum n_i / tau_i, sum n_i * tau_i)
    scaffold_mean: Arrays  # SCAFFOLD over a site's clients: their mean c_i+ - c_i
    scaffold_clients: list[int]  # ... and which clients it is the mean of


# -- secure aggregation's site steps (apps/secagg.py <-> flow/privacy/secagg.py) --------------------

class _StepFor(TypedDict):
    client: int
    round: int
    secagg: SecaggOptions


class SecaggStep(_StepFor, total=False):
    """One client's secure-aggregation step, as the driver sends it to the client's site."""

    site: str


ShareReply = dict[int, bytes]  # ``share``: an encrypted share pair for every client of the group, by recipient


class UnmaskReply(TypedDict):
    """``unmask``: shares of ``b`` for the survivors, of the secret key for the dropped (field
    elements, by whose secret they are), and the senders whose shares did not decrypt."""

    b: dict[int, int]
    sk: dict[int, int]
    unreadable: list[int]


# ``keys``: the client's 32-byte X25519 public key
SecaggReply = bytes | ShareReply | UnmaskReply


# -- the round row (rounds.parquet: flow/persist/table.py ROWS_SCHEMA; the round file's JSON) -------

class FailureRow(TypedDict):
    client: int  # -1: the round itself
    site: str
    reason: str


class StaleRow(TypedDict):
    client: int
    staleness: int


class MetricRow(TypedDict):
    name: str
    value: float


class UpdateRow(TypedDict):
    """One accepted update of the round."""

    client: int
    site: str
    examples: int
    loss: float | None
    accuracy: float | None
    train_s: float | None
    queue_s: float | None
    worker: str | None
    batch_job: str | None
    steps: int | None
    staleness: int
    bytes_up: int
    load_s: float | None
    cold: bool | None
    metrics: list[MetricRow]


class SiteRow(TypedDict):
    """``round.aggregate: site``: one site's partial."""

    site: str
    clients: int
    examples: int
    bytes_in_site: int
    bytes_up: int
    seconds: float | None


class FedClientRow(TypedDict):
    client: int
    site: str
    examples: int
    metrics: list[MetricRow]


class RoundRow(TypedDict, total=False):
    """One round (or FedBuff server step). Every column is optional to a reader: a row that an
    older fedgrid wrote lacks the columns added since, round 0's row is empty, and evaluation,
    federated evaluation, privacy and fine-tuning fill theirs only when the job has them. Besides
    these, a row has a float column per client metric, ``train_<name>`` and ``fed_<name>[_min|_p10]``,
    named at run time (`set_columns`)."""

    round: int
    attempt: int
    started_at: float
    seconds: float
    test_accuracy: float | None  # the driver's central evaluation (eval_every)
    test_loss: float | None
    train_loss: float | None  # the clients' example-weighted mean
    train_accuracy: float | None
    clients_selected: int
    clients_ok: int
    clients_failed: int
    participants: list[int]
    failures: list[FailureRow]
    skipped: list[FailureRow]  # left out by deadline-aware selection
    carried: list[StaleRow]  # late updates of earlier rounds that joined (round.late: carry)
    reused: list[StaleRow]  # absent clients whose last update stood in (round.absent: reuse)
    updates: list[UpdateRow]
    examples: int
    bytes_down: int
    bytes_up: int
    bytes_in_sites: int | None
    site_partials: list[SiteRow] | None
    bytes_by_ref: int
    gather_s: float
    aggregate_s: float
    eval_s: float | None
    client_train_s_max: float
    client_queue_s_max: float
    # federated evaluation (flow/rounds/fedeval.py)
    fed_clients: list[FedClientRow]
    fed_failures: list[FailureRow]
    fed_s: float
    fed_examples: int
    # client-level differential privacy (flow/privacy/dp.py); dp_history only in the round file
    dp_noise: float
    dp_sample_rate: float
    dp_epsilon: float
    dp_history: list[list[float]]
    # fine-tuning: the frozen base the params belong to
    base_name: str
    base_sha256: str


def set_columns(row: RoundRow, columns: Mapping[str, float | None]) -> RoundRow:
    """Add the client-metric columns, whose names the clients choose (``train_<name>``,
    ``fed_<name>``): no TypedDict can name them, so this is the one place they go in."""
    cast("dict[str, object]", row).update(columns)
    return row
