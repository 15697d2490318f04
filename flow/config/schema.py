"""The job file's schema: one pydantic model per block, ``Job`` at the top.

Validation is pydantic's (``extra="forbid"`` catches misspelled keys). The strategy and executor
blocks are unions discriminated by ``name`` / ``kind``, built from the strategies and site kinds
themselves, so each documents and validates its own keys. Rules that span blocks live in
:mod:`.checks`; turning pydantic's errors into one line lives in :mod:`.loading`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedgrid.executors import kind_module, specs
from fedgrid.flow.strategies import DEFAULT, STRATEGIES, option_models

if TYPE_CHECKING:
    from typing import TypeAlias

    from fedgrid.executors.common import SpecBase
    from fedgrid.flow.strategies.base import StrategyOptions


class _Strict(BaseModel):
    # use_attribute_docstrings: the string under each field is its description, which the job-file
    # reference (docs/reference/job-file.md, written by docs/hooks/reference.py) is generated from
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class PartitionSpec(_Strict):
    """How a pooled dataset is split into clients (simulation and `fedgrid partition`)."""

    kind: Literal["iid", "dirichlet", "shards", "natural", "none"] = "iid"
    """`iid` (a seeded shuffle), `dirichlet` (label skew, see `alpha`), `shards`, `natural` (see
    `column`) or `none` (splits like `iid`; use it with per-client files, `data.path` with
    `{client}`)."""
    alpha: Annotated[float, Field(gt=0)] = 0.5
    """`dirichlet`: the concentration. A smaller alpha gives each client fewer classes."""
    shards_per_client: Annotated[int, Field(ge=1)] = 2
    """`shards`: sort the rows by label, cut them into clients x k shards and deal k shards to each
    client."""
    column: str | None = None
    """`natural`: one group per distinct value of this column, dealt round-robin to the clients."""
    min_size: Annotated[int, Field(ge=0)] = 2
    """`dirichlet`: the draws are repeated until every client has at least this many rows."""


class SkewSpec(_Strict):
    """Feature skew (FedBN's setting, Li et al. 2021): the same task seen through each site's own
    scanner or camera. Given per site (``sites.<name>.data.skew``); applied at the site to its
    clients' rows, in this order: rotate, scale, shift, noise."""

    rotate: Annotated[int, Field(multiple_of=90)] = 0
    """Degrees, a multiple of 90, over the last two (spatial) axes; a quarter turn needs square
    images."""
    scale: float = 1.0
    """The rows' values are then multiplied by this."""
    shift: float = 0.0
    """Then this is added."""
    noise: Annotated[float, Field(ge=0)] = 0.0
    """Then Gaussian noise of this standard deviation is added, drawn from the job seed and the
    client id."""


class DataSpec(_Strict):
    """What data each client trains on and what the driver evaluates on."""

    dataset: Literal["digits", "fashion_mnist", "parquet", "synthetic", "custom"] = "digits"
    """`digits` (scikit-learn's 8x8 digits, shipped with it), `fashion_mnist` (the idx `.gz` files
    in `root`), `parquet` (`path`), `synthetic` (Gaussian rows labelled by a random linear teacher:
    `samples_per_client` rows each, `shape` [16] and `num_classes` 4 unless set; for smoke tests and
    scale benchmarks) or `custom` (the job's `client` loads its own data; its `client.options` say
    from where)."""
    clients: Annotated[int, Field(ge=1)] = 10
    """Total number of clients across all sites."""
    partition: PartitionSpec = PartitionSpec()
    """How a pooled dataset is split into clients. Every site computes the same split from (labels,
    clients, partition, seed) and keeps only its own clients' rows."""
    root: str | None = None
    """`fashion_mnist`: the folder holding the four idx `.gz` files (unset:
    `/usr/share/datasets/fashion-mnist`, where `apt-get install dataset-fashion-mnist` puts them)."""
    path: str | None = None
    """`parquet`: one file, partitioned like the built-in datasets, or a template with `{client}`,
    e.g. `shards/client-{client:03d}.parquet` (then `partition.kind` must be `none` or `iid`). For
    remote sites the path is on the site's filesystem."""
    test_path: str | None = None
    """`parquet`: the held-out file for central evaluation. Without it there is no test accuracy."""
    features: list[str] | None = None
    """`parquet`: the feature columns (unset: every column but `label`). List columns give one vector
    per row."""
    label: str = "label"
    """`parquet`: the label column."""
    shape: list[int] | None = None
    """Input shape, e.g. `[1, 28, 28]`. `parquet`: unset, it is read from the file metadata that
    `fedgrid partition` writes, or taken as the number of features; `synthetic`: [16] unset."""
    num_classes: Annotated[int, Field(ge=2)] | None = None
    """The class count. `parquet`: unset, it is read from the file metadata, or taken as max label +
    1; `synthetic`: 4 unset."""
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """`digits`: the held-out share."""
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """The built-in client keeps this share of each client's rows out of training, for federated
    evaluation (`round.federated_every`)."""
    samples_per_client: Annotated[int, Field(ge=1)] = 32
    """`synthetic`: rows per client."""
    skew: SkewSpec | None = None
    """Feature skew (FedBN's setting), usually per site (`sites[].data: {skew: {rotate: 180, scale:
    0.5}}`). At the site each client's rows, trained on and held out alike, are rotated, scaled,
    shifted and noised; the driver's test set is never skewed. Applies wherever rows come from
    `fedgrid.apps.datasets.client_arrays` (the built-in client, or yours if it uses it)."""


class TrainSpec(_Strict):
    """Local training at each client: the built-in client's SGD, and what every client's code
    reads as ``work.settings``."""

    epochs: Annotated[int, Field(ge=0)] = 1
    """Local epochs a round. `0` trains nothing and returns the global model: a dry run of the round
    machinery."""
    batch_size: Annotated[int, Field(ge=1)] = 32
    """Minibatch size of local SGD."""
    lr: Annotated[float, Field(gt=0)] = 0.05
    """Learning rate of local SGD."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """SGD momentum."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """SGD weight decay."""
    threads: Annotated[int, Field(ge=1)] = 1
    """torch, OpenMP and BLAS threads per worker, set before any client code runs (every client,
    yours too)."""
    device: Literal["auto", "cpu"] = "auto"
    """Where clients compute (`ctx.device`) and where the driver evaluates. `auto`: a worker's GPU
    when it has one (pinned by its site's `gpus`, named by `CUDA_VISIBLE_DEVICES`, or the node's
    first GPU) and torch sees it there, else the CPU. `cpu`: never a GPU."""
    keep_clients: Annotated[int, Field(ge=1)] = 64
    """Client objects a worker keeps, least recently used dropped; a dropped client is rebuilt and
    reloads its state."""
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    """Seconds a client's task may run at its site. Past it the task is interrupted there and its
    worker given back for the site's other clients (a client that ignores the interrupt loses its
    worker, which the pool replaces); the failure reads `timeout: ...`. Unset, the limit is how long
    an answer can still be used: twice `round.deadline_s` (a late answer still teaches the client's
    profile), or `1 + max_staleness` deadlines with `round.late: carry`."""
    output_mb: Annotated[float, Field(gt=0)] = 16.0
    """stdout and stderr each worker keeps (its clients' prints, C libraries, child processes),
    newest first, in two rotating files `RUN_DIR/logs/workers/<host>-<pid>.log` and `.log.1` (a site
    that cannot write there: `$TMPDIR/fedgrid-<uid>-<nonce>/output`)."""


# The strategy block: `name` picks the strategy, whose Options class holds its keys. A type checker
# cannot see a union built at run time: to it the block is what every strategy's Options is.
if TYPE_CHECKING:
    class StrategySpec(StrategyOptions):
        """Some strategy's Options: a StrategyOptions with the ``name`` each one declares (a Literal)."""

        @property
        def name(self) -> str: ...
else:
    StrategySpec = Annotated[Union[tuple(option_models())], Field(discriminator="name")]  # noqa: UP007 - built at runtime


def _default_strategy() -> StrategySpec:
    """A job without a strategy block: the default strategy's Options. Statically a StrategyOptions,
    which declares no ``name``; every strategy's Options has one (flow/strategies/__init__.py finds
    only those)."""
    return cast("StrategySpec", STRATEGIES[DEFAULT].Options())


class RoundSpec(_Strict):
    """How each round selects, waits, tolerates failures, aggregates and evaluates."""

    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Share of the clients selected each round. The count is `max(min_clients, ceil(fraction *
    clients))`, picked by the seeded RNG."""
    min_clients: Annotated[int, Field(ge=1)] = 1
    """The quorum: a round needs this many updates (at most the number selected)."""
    deadline_s: Annotated[float, Field(gt=0)] = 600.0
    """The gather stops waiting after this many seconds."""
    retries: Annotated[int, Field(ge=0)] = 1
    """How many times a round that missed its quorum is run again, with a new selection; after that
    the run stops at the last good round with exit code 1."""
    task_retries: Annotated[int, Field(ge=0)] = 1
    """Parsl retries of one client's task, for transient causes only (a lost worker or manager, a
    dropped connection, a timeout)."""
    pace: Literal["epochs", "deadline"] = "epochs"
    """`epochs`: every client trains `train.epochs`. `deadline`: local steps sized from the clients'
    profiles so the selected clients finish together (use it with `strategy: fednova`)."""
    pace_quantile: Annotated[float, Field(gt=0, le=1)] = 0.5
    """`pace: deadline`: the round's target, a quantile of the clients' wall-time shares."""
    pace_min_fraction: Annotated[float, Field(gt=0, le=1)] = 0.25
    """`pace: deadline`: the least work a paced client does, as a share of its full work."""
    pace_max_fraction: Annotated[float, Field(ge=1)] = 1.0
    """`pace: deadline`: the most work a paced client does, as a multiple of its full work (above 1,
    fast clients train longer instead of idling)."""
    select: Literal["random", "deadline"] = "random"
    """`random`: a seeded uniform sample. `deadline`: leave out clients predicted to miss
    `deadline_s` (alone, or queued behind others on their site's workers) and clients still busy
    with a late task; prefer clients that answer reliably. Skips are recorded in `rounds.parquet`
    `skipped`."""
    explore_after: Annotated[int, Field(ge=1)] = 5
    """`select: deadline`: a client left out as too slow is tried again after this many rounds (its
    site may have become faster)."""
    late: Literal["drop", "carry"] = "drop"
    """An update that arrives after the deadline: `drop` it, or `carry` it into the next round that
    ends after it arrives (weighted by staleness)."""
    absent: Literal["drop", "reuse"] = "drop"
    """A selected client that did not answer (failed, late, site down): `drop` it, or `reuse` its
    last update in its place (MIFA)."""
    staleness_exponent: Annotated[float, Field(ge=0)] = 0.5
    """A carried or reused update weighs `examples * (1 + staleness) ** -staleness_exponent`."""
    max_staleness: Annotated[int, Field(ge=1)] = 2
    """A carried or reused update older than this many rounds is dropped."""
    eval_every: Annotated[int, Field(ge=1)] = 1
    """Central evaluation every N rounds, and always on the last round."""
    federated_every: Annotated[int, Field(ge=0)] = 0
    """Federated evaluation every N rounds, and on the last (`0`: never): a share of all clients
    evaluates the new global model on its own held-out data (`fed_<metric>` columns)."""
    federated_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Federated evaluation: the seeded share of all clients asked."""
    show: str | None = None
    """The rounds-table column the progress line shows first, e.g. `fed_rmse`."""
    max_update_norm: Annotated[float, Field(gt=0)] | None = None
    """Reject an update whose distance from the global model (L2, over float tensors) exceeds
    this."""
    max_examples: Annotated[int, Field(ge=1)] | None = None
    """The example count is the aggregation weight: reject a claim above this."""
    examples_growth: Annotated[float, Field(ge=1)] = 2.0
    """Reject an example count above this many times what the client answered before (its data may
    grow, not jump)."""
    aggregate: Literal["flat", "site"] = "flat"
    """`flat`: every client's update travels to the driver. `site`: an aggregation app at each site
    sums its clients' updates and one partial per site travels to the driver (two-tier
    aggregation)."""
    site_deadline_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.9
    """`aggregate: site`: a site's aggregator starts at the latest at this share of `deadline_s`."""
    stop_wait_s: Annotated[float, Field(ge=0)] = 25.0
    """After a SIGTERM, how long the round in progress may still take to finish; then the run stops
    without it. 25 s fits Slurm's KillWait (30 s after its SIGTERM) and systemd's stop timeout
    (90 s)."""


# A site's executor block: `kind` picks the module under fedgrid.executors, whose Spec holds the
# kind's options (so each kind documents and validates its own keys in one place). To a type checker,
# which cannot see a union built at run time, the block is the base every kind's Spec derives from.
if TYPE_CHECKING:
    ExecutorSpec: TypeAlias = SpecBase
else:
    ExecutorSpec = Annotated[Union[tuple(specs())], Field(discriminator="kind")]  # noqa: UP007 - built at runtime


class SiteSpec(_Strict):
    """One site: a Parsl executor and the clients it hosts. Client ids run across sites in order."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    """Letters, digits, `_ . -`; unique. Also the Parsl executor label (a job without `sites` has
    one site, `here`)."""
    executor: ExecutorSpec = Field(default_factory=lambda: kind_module("htex").Spec())
    """The site's kind and its options (`sites[].executor.*` below, per kind). `executor: slurm` is
    short for `{kind: slurm}`; a block without `kind` is `htex`."""
    clients: Annotated[int, Field(ge=1)] | None = None
    """Number of clients this site hosts. Sites without a count split what is left evenly; if every
    site gives a count, the counts must add up to `data.clients`."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Overrides of any `data.*` key for this site's training data, e.g. its own `path` or `skew`."""
    store: str | None = None
    """`round.aggregate: site`: where this site's clients leave their updates for its aggregator (a
    path the site reads fast: node-local disk or its parallel file system); unset: the run's
    store."""
    cohort: Literal["auto"] | Annotated[int, Field(ge=1, le=4096)] = "auto"
    """Clients a train task carries. `auto`: one task each unless the site has 16 or more clients a
    worker, then about 0.2 s of training a task, from the clients' measured times (at most 16 a task
    before they are known, never fewer than two tasks a worker); a number sets it; `1` is one task
    per client."""

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_shorthand(cls, v: Any) -> Any:
        """`executor: slurm` means the kind with its defaults; a block without `kind` is `htex`."""
        if isinstance(v, str):
            return {"kind": v}
        if isinstance(v, dict) and "kind" not in v:
            return {"kind": "htex", **v}
        return v

    @field_validator("data")
    @classmethod
    def _known_data_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(DataSpec.model_fields))
        if unknown:
            raise ValueError(f"unknown data key(s) {unknown}; valid: {sorted(DataSpec.model_fields)}")
        return v


class FaultSpec(_Strict):
    """One fault-injection rule (drills, tests, benchmarks): whom it hits and what happens.

    Injected inside the real train app on the real executor, so the driver sees exactly what a
    real failure looks like: an exception, a slow client, a dead worker process, a site with no
    workers. Draws are seeded by (job seed, round, client), so a drill is reproducible.
    """

    site: str | None = None
    """The rule hits every client of this site (with `clients`: those of them)."""
    clients: list[int] | None = None
    """The rule hits these client ids (neither `site` nor `clients`: every client)."""
    fail_p: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Chance per client per round of an exception."""
    slowdown: Annotated[float, Field(ge=1)] = 1.0
    """Training takes this many times as long."""
    delay_s: Annotated[float, Field(ge=0)] = 0.0
    """And then the answer waits this many seconds more (a slow link, a busy node)."""
    raise_at: list[int] = Field(default_factory=list)
    """Rounds in which the client raises."""
    kill_worker_at: list[int] = Field(default_factory=list)
    """Rounds in which the client's worker process dies mid-task (a real `os._exit`, once per round
    and client), which Parsl sees as a lost worker and retries. Needs worker processes (not
    `local`)."""
    lost_from: Annotated[int, Field(ge=1)] | None = None
    """With `site`: the site's workers are killed (a real SIGKILL of its block's process group) from
    this round ... Needs worker processes (not `local`)."""
    lost_until: Annotated[int, Field(ge=1)] | None = None
    """... and a new block comes back at this round (unset: never)."""
    scale_update: float | None = None
    """A hostile client: sends `G + scale_update * (x - G)`; `-10` flips its update and blows it
    up."""
    hold_at: list[int] = Field(default_factory=list)
    """Rounds in which the client, once trained, keeps its answer until the driver has moved on
    without it (the next round has started, or this one is checkpointed), or until the file
    `<run_dir>/faults/release` exists: late for certain, with no race against a clock (under
    FedBuff: stale for certain). Then `delay_s` as usual. Needs a site that shares the driver's
    disk."""

    def hits(self, client: int, site: str) -> bool:
        """Whether this rule applies to a client (hosted at `site`)."""
        if self.site is not None and self.site != site:
            return False
        return self.clients is None or client in self.clients


class CheckpointSpec(_Strict):
    """The run directory: round files, the rounds table, logs, the default store."""

    dir: str = "runs/{name}"
    """The run directory; `{name}` is the job's name. A relative path is relative to the current
    directory."""
    keep: Annotated[int, Field(ge=0)] = 0
    """Keep round 0 and the newest N round files; `0` keeps every file. Rows in `rounds.parquet`
    are always kept."""
    share_group: str | None = None
    """A Unix group (one you are in) that may read the run directory, never write it: directories
    2750 (setgid) and files 0640. Unset, the run directory is owner-only (0700/0600), and one shared
    before is closed again."""


class StoreSpec(_Strict):
    """The data plane: where params go when they are too big to ride inside a task."""

    url: str | None = None
    """Where by-reference params and clients' state go: a directory every site can reach, or an
    fsspec URL (`s3://...` needs `fedgrid[s3]`, `gs://...` `fedgrid[gcs]`). Unset: `<run_dir>/store`,
    reachable only by sites on this machine."""
    mode: Literal["auto", "always", "never"] = "auto"
    """`auto`: by reference to a site when the params exceed its inline limit; `always`; or `never`
    (everything inline)."""
    inline_max_mb: Annotated[float, Field(gt=0)] = 8.0
    """The inline limit. For `globus_compute` sites it is also capped at the service's 10 MB per
    task, less serialization overhead (about 7.1 MB of params)."""


class CompressionSpec(_Strict):
    """What crosses the wire (apps/codec.py): clients send compressed deltas; the driver may send
    the global model in fp16."""

    up: Literal["none", "fp16", "int8", "topk"] = "none"
    """Clients send their delta from the global model, encoded: `fp16` (2x fewer bytes), `int8` (one
    scale per tensor, stochastic rounding: about 4x) or `topk` (the largest `topk_fraction` of each
    tensor as index/value pairs)."""
    down: Literal["none", "fp16"] = "none"
    """`fp16`: the global model is sent in half precision; the driver keeps full precision and
    applies each client's change to it."""
    topk_fraction: Annotated[float, Field(gt=0, le=1)] = 0.01
    """`topk`: the share of each tensor's entries sent."""
    dense_below: Annotated[int, Field(ge=0)] = 1024
    """`topk`: tensors with fewer elements are sent whole (as in Deep Gradient Compression)."""
    error_feedback: bool = True
    """`topk`: what was left out is kept in each client's state at its site and added to the next
    round's delta (needs a store every site reaches)."""

    def needs_store(self) -> bool:
        return self.up == "topk" and self.error_feedback

    def up_codec(self) -> str:
        """The codec the clients use: a float32 delta when only the download is compressed."""
        return "fp32" if self.up == "none" and self.down == "fp16" else self.up


class PrivacySpec(_Strict):
    """Client-level differential privacy (flow/privacy/dp.py)."""

    mode: Literal["central", "local"] = "central"
    """`central`: DP-FedAvg, the driver clips each client's delta and noises the mean. `local`: each
    site clips and noises its own update before it leaves."""
    clip: Annotated[float, Field(gt=0)]
    """L2 bound on each client's delta."""
    noise_multiplier: Annotated[float, Field(gt=0)]
    """z: the noise's standard deviation in units of `clip` (`z * clip / m` on the mean of m clients
    in `central` mode, `z * clip` on each update in `local` mode)."""
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    """The delta that the RDP accountant reports epsilon for."""
    epsilon_budget: Annotated[float, Field(gt=0)] | None = None
    """A round that would take epsilon past this is not started, and the run ends there."""


class SecAggSpec(_Strict):
    """Secure aggregation (flow/privacy/secagg.py): the driver sees only the sum of masked updates."""

    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    """The Shamir threshold t = ceil(threshold * clients in the round), at least 2."""
    frac_bits: Annotated[int, Field(ge=8, le=40)] = 24
    """Fixed-point precision (fraction bits) of the masked updates in the ring Z_2^64."""
    key_dir: str | None = None
    """Where sites keep their per-round secrets (unset: the site's temp dir)."""


class ScheduleSpec(_Strict):
    """Recurring training (``fedgrid schedule``): at each firing of ``cron`` the job continues from
    its newest checkpoint for ``rounds_per_run`` more rounds. Five fields (minute hour day month
    weekday) as in crontab, or six with seconds last (``*/10 * * * * *``: every 10 s)."""

    cron: str
    """When to run: five cron fields as in crontab (local time), or six with seconds last."""
    rounds_per_run: Annotated[int, Field(ge=1)] = 1
    """How many rounds each firing adds."""

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"not a cron expression: {v!r} (e.g. '0 2 * * *' for 02:00 every day)")
        return v


class MLflowSpec(_Strict):
    """An MLflow tracking server or database; without `uri`, a SQLite file in <run_dir>/mlflow."""

    uri: str | None = None
    """The tracking URI: `http://host:5000`, `sqlite:///path/mlflow.db`, `postgresql://...` (unset:
    SQLite in `<run_dir>/mlflow`)."""
    experiment: str | None = None
    """The MLflow experiment (unset: the job's name)."""


class TrackingSpec(_Strict):
    """Experiment tracking (flow/tracking): every round's row mirrored to MLflow and/or TensorBoard."""

    mlflow: MLflowSpec | None = None
    """Mirror to MLflow; `mlflow: true` is a SQLite store in `<run_dir>/mlflow`."""
    tensorboard: bool = False
    """Write TensorBoard event files in `<run_dir>/tensorboard`."""
    retry_s: Annotated[float, Field(gt=0)] = 1.0
    """First wait before retrying a tracker that failed; it doubles, up to 30 s."""
    drain_s: Annotated[float, Field(ge=0)] = 60.0
    """How long the end of a run waits for the trackers to catch up."""

    @field_validator("mlflow", mode="before")
    @classmethod
    def _mlflow_shorthand(cls, v: Any) -> Any:
        """`mlflow: true` means the local SQLite store; `false` none."""
        return ({} if v else None) if isinstance(v, bool) else v


class ModelSpec(_Strict):
    """The built-in client's model. `model: mlp` is short for `{name: mlp}`."""

    name: str = "cnn"
    """A built-in (`logreg`, `mlp`, `cnn`) or `package.module:factory`, called as
    `factory(input_shape=..., num_classes=..., **kwargs)` with only the arguments its signature
    takes (a factory of no arguments is called bare); it must return a `torch.nn.Module`."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """The model's options. `mlp`: `hidden` (128). `cnn`: `channels` ([16, 32]), `hidden` (64),
    `norm` (`none`, or `batch`: BatchNorm after each convolution)."""


def stateful_client(path: str) -> bool:
    """Whether the client class a job names keeps state (defines get_state); False when it cannot
    be imported here (fedgrid check says so on its own)."""
    import importlib

    mod, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(mod), attr)
    except Exception:  # noqa: BLE001 - any import failure of the user's module is reported by the check
        return False
    return callable(getattr(cls, "get_state", None))


class DittoSpec(_Strict):
    """Ditto (Li et al., ICML 2021): each client also trains a personal model of its own,
    regularised toward the global one by ``lam / 2 * ||v - w||^2``; it never leaves the site."""

    lam: Annotated[float, Field(gt=0)] = 0.1
    """The weight of the proximal term toward the global model."""
    epochs: Annotated[int, Field(ge=1)] = 1
    """Epochs of the personal model a round."""


class PersonalSpec(_Strict):
    """Personalization: what each client keeps to itself (in its client state, at its site).

    ``layers`` names params that never leave a client and are never aggregated: glob patterns over
    param names (FedPer / FedRep's personal head: ``["fc2.*"]``), or ``norm`` for every
    normalization layer's weights and statistics (FedBN); ``head_epochs`` makes it FedRep.
    ``ditto`` adds a personal model."""

    @model_validator(mode="after")
    def _rep_needs_a_head(self) -> PersonalSpec:
        if self.head_epochs and not self.layers:
            raise ValueError("head_epochs (FedRep) trains the personal layers first: name them in personal.layers")
        return self

    layers: list[str] = Field(default_factory=list)
    """Params that stay at each client: glob patterns over param names (FedPer's personal head,
    `["fc2.*"]`), or `norm` for every normalization layer's weights and statistics (FedBN). A
    pattern that matches nothing is refused."""
    head_epochs: Annotated[int, Field(ge=0)] = 0
    """FedRep (Collins et al., ICML 2021): each round first trains only the personal layers for
    this many epochs, the shared ones frozen, then only the shared ones for `train.epochs` (`0`:
    FedPer, both together). Needs `layers`."""
    ditto: DittoSpec | None = None
    """Ditto: a personal model per client, regularised toward the global one."""


FLOWER_CLIENT = "fedgrid.apps.flower.client:FlowerClient"  # the class that runs a Flower ClientApp at a site
_OBJECT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class ClientSpec(_Strict):
    """The code that runs at each site: ``path`` names a fedgrid client class the sites can import
    (fedgrid.client), ``options`` reach it as ``ctx.options``; or ``flower`` names a Flower
    ``ClientApp`` object that fedgrid calls unchanged (apps/flower), with ``initial`` the function
    giving its initial model and ``run_config`` its ``Context.run_config``. Without a client block a
    job runs the built-in client (the model, data and train blocks)."""

    path: Annotated[str | None, Field(pattern=_OBJECT_PATH)] = None
    """Your client class, `package.module:Class` (a `fedgrid.client.Client`). `client:
    mypkg.fl:MyClient` is short for `{path: mypkg.fl:MyClient}`."""
    options: dict[str, Any] = Field(default_factory=dict)
    """What the client gets as `ctx.options`."""
    python_path: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """Directories put first on `sys.path` before the class (or app) is imported, by `fedgrid check`
    and by every site's workers: for a client package that the sites' Python environments do not
    install. A relative path is relative to the job file's folder."""
    flower: Annotated[str | None, Field(pattern=_OBJECT_PATH)] = None
    """A Flower `ClientApp` object, `package.module:app`, run unchanged at the sites (instead of
    `path`)."""
    initial: Annotated[str | None, Field(pattern=_OBJECT_PATH)] = None
    """`flower`: `package.module:function` returning the first global model's arrays (a Message API
    app needs it)."""
    run_config: dict[str, bool | int | float | str] = Field(default_factory=dict)
    """`flower`: the app's `Context.run_config`."""

    @model_validator(mode="before")
    @classmethod
    def _flower_runs_in_its_adapter(cls, v: Any) -> Any:
        """A Flower app runs inside fedgrid's adapter class, which is then the client's `path`."""
        if isinstance(v, dict) and v.get("flower") and not v.get("path"):
            return {**v, "path": FLOWER_CLIENT}
        return v

    @model_validator(mode="after")
    def _one_kind_of_client(self) -> ClientSpec:
        if self.flower is None:
            if self.path is None:
                raise ValueError("expected path (a fedgrid client class, package.module:Class) or flower "
                                 "(a Flower ClientApp, package.module:app)")
            if self.initial is not None or self.run_config:
                raise ValueError("initial and run_config belong to a Flower app (client.flower)")
        elif self.path != FLOWER_CLIENT:
            raise ValueError("give either path (a fedgrid client class) or flower (a Flower ClientApp), not both")
        elif self.options:
            raise ValueError("a Flower app reads client.run_config (its Context.run_config), not client.options")
        return self

    @property
    def key(self) -> str:
        """The job key that names the user's code, for messages."""
        return "client.flower" if self.flower else "client.path"

    @property
    def code(self) -> str:
        """The user's own object: the client class, or the Flower app."""
        return self.flower or str(self.path)

    @property
    def stateful(self) -> bool:
        """Whether each client keeps state between rounds: a Flower app's Context.state always."""
        return bool(self.flower) or stateful_client(str(self.path))

    def site_options(self, job_name: str) -> dict[str, Any]:
        """What the client object gets as ``ctx.options``: the job's options, or for a Flower app
        the app, its initial-model function, its run_config and the run's Flower ``run_id``."""
        if not self.flower:
            return dict(self.options)
        run_id = int(hashlib.sha256(f"fedgrid/{job_name}".encode()).hexdigest()[:15], 16)
        return {"app": self.flower, "initial": self.initial, "run_config": dict(self.run_config), "run_id": run_id}


class Job(_Strict):
    """A job file. Misspelled or unknown keys are errors that list the valid keys."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "job"
    """Letters, digits, `_ . -`. Used in `checkpoint.dir`."""
    rounds: Annotated[int, Field(ge=1)] = 10
    """Train up to this round (server steps under FedBuff)."""
    seed: int = 0
    """Seeds the digits split, the partition, model init, client selection and local training."""
    model: ModelSpec = ModelSpec()
    """The built-in client's model."""
    client: ClientSpec | None = None
    """Your own client code (or a Flower app). Unset, the built-in client trains `model` on
    `data`."""
    personal: PersonalSpec | None = None
    """Personalization: what stays at each client (FedBN, FedPer, FedRep, Ditto)."""
    data: DataSpec = DataSpec()
    """What data each client trains on and what the driver evaluates on."""
    train: TrainSpec = TrainSpec()
    """Local training at each client."""
    strategy: StrategySpec = Field(default_factory=_default_strategy)
    """The aggregation strategy: `name` picks it, the other keys are its options. `strategy:
    fednova` is short for `{name: fednova}`; a block without `name` is FedAvg."""
    round: RoundSpec = RoundSpec()
    """How each round selects, waits, tolerates failures, aggregates and evaluates."""
    sites: list[SiteSpec] = Field(default_factory=lambda: [SiteSpec(name="here")])
    """The sites, each a Parsl executor hosting some of the clients."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    """The run directory and what it keeps."""
    store: StoreSpec = StoreSpec()
    """The data plane: where params too large to ride inside a task go."""
    faults: list[FaultSpec] = Field(default_factory=list)
    """Fault-injection rules for drills and benchmarks."""
    compression: CompressionSpec = CompressionSpec()
    """Update compression."""
    privacy: PrivacySpec | None = None
    """Client-level differential privacy (needs `fedgrid[privacy]`)."""
    secagg: SecAggSpec | None = None
    """Secure aggregation: the driver sees only the sum."""
    schedule: ScheduleSpec | None = None
    """Recurring training, for `fedgrid schedule`."""
    tracking: TrackingSpec | None = None
    """Experiment tracking with MLflow and TensorBoard (needs `fedgrid[tracking]`)."""
    monitoring: bool = False
    """Parsl's MonitoringHub, into `<run_dir>/monitoring.db` (needs `fedgrid[monitoring]`)."""

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_shorthand(cls, v: Any) -> Any:
        """`strategy: fedprox` means that strategy with its defaults; a block without `name` is FedAvg."""
        if isinstance(v, str):
            return {"name": v}
        if isinstance(v, dict) and "name" not in v:
            return {"name": "fedavg", **v}
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _flower_loads_its_own_data(cls, v: Any) -> Any:
        """A Flower app reads its partition itself (partition-id, num-partitions): its data block
        needs only the client count, so the dataset defaults to ``custom`` rather than digits."""
        client, data = (v.get("client"), v.get("data")) if isinstance(v, dict) else (None, None)
        if isinstance(client, dict) and client.get("flower") and (data is None or isinstance(data, dict)) \
                and "dataset" not in (data or {}):
            return {**v, "data": {**(data or {}), "dataset": "custom"}}
        return v

    @field_validator("client", mode="before")
    @classmethod
    def _client_shorthand(cls, v: Any) -> Any:
        """`client: mypkg.fl:Client` means that class with no options."""
        return {"path": v} if isinstance(v, str) else v

    # -- derived views -------------------------------------------------------------------------
    def run_dir(self, base: Path) -> Path:
        d = Path(self.checkpoint.dir.format(name=self.name))
        return d if d.is_absolute() else (base / d)

    def client_sites(self) -> list[str]:
        """Site name of every client id, in id order (clients are numbered across sites)."""
        out: list[str] = []
        for s in self.sites:
            out += [s.name] * (s.clients or 0)
        return out

    def site(self, name: str) -> SiteSpec:
        return next(s for s in self.sites if s.name == name)

    def site_data(self, name: str) -> DataSpec:
        """The data block as a given site sees it (global block plus the site's overrides)."""
        merged = self.data.model_dump()
        merged.update(self.site(name).data)
        return DataSpec.model_validate(merged)

    def client_state(self) -> list[str]:
        """What keeps per-client state in the store (SCAFFOLD's variates, top-k's residuals): the
        run then needs a store every site reaches."""
        out = []
        if STRATEGIES[self.strategy.name].needs_store:
            out.append(f"strategy {self.strategy.name} keeps each client's control variate")
        if self.compression.needs_store():
            out.append("compression.up: topk with error_feedback (error_feedback: false avoids it) keeps each "
                       "client's residual")
        if self.personal is not None and (self.personal.layers or self.personal.ditto):
            out.append("personal: keeps each client's personal layers or model")
        if self.client is not None and self.client.flower:
            out.append(f"client.flower {self.client.flower} keeps each client's Context.state")
        elif self.client is not None and self.client.stateful:
            out.append(f"client {self.client.path} keeps each client's state (get_state)")
        return out

    def clients_per_round(self) -> int:
        return max(self.round.min_clients, math.ceil(self.round.fraction * self.data.clients))

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: the model (or client code) and the strategy."""
        key: dict[str, Any] = {"model": self.model.model_dump(), "strategy": self.strategy.model_dump()}
        if self.client is not None:  # (absent for the built-in client: old checkpoints still match)
            key["client"] = self.client.code
        if self.personal is not None:  # what is personal is part of what the checkpoint's model means
            key["personal"] = self.personal.model_dump()
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

