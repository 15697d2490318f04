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
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedgrid.executors import kind_module, specs
from fedgrid.flow.strategies import DEFAULT, STRATEGIES, option_models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PartitionSpec(_Strict):
    """How a pooled dataset is split into clients (simulation and `fedgrid partition`)."""

    kind: Literal["iid", "dirichlet", "shards", "natural", "none"] = "iid"
    alpha: Annotated[float, Field(gt=0)] = 0.5
    shards_per_client: Annotated[int, Field(ge=1)] = 2
    column: str | None = None
    min_size: Annotated[int, Field(ge=0)] = 2


class SkewSpec(_Strict):
    """Feature skew (FedBN's setting, Li et al. 2021): the same task seen through each site's own
    scanner or camera. Given per site (``sites.<name>.data.skew``); applied at the site to its
    clients' rows, in this order: rotate, scale, shift, noise."""

    rotate: Annotated[int, Field(multiple_of=90)] = 0  # degrees, over the last two (spatial) axes
    scale: float = 1.0  # values multiplied by this
    shift: float = 0.0  # then this added
    noise: Annotated[float, Field(ge=0)] = 0.0  # then Gaussian noise of this std, seeded per client


class DataSpec(_Strict):
    """What data each client trains on and what the driver evaluates on."""

    # custom: the job's client code loads its own data (its client.options say from where)
    dataset: Literal["digits", "fashion_mnist", "parquet", "synthetic", "custom"] = "digits"
    clients: Annotated[int, Field(ge=1)] = 10
    partition: PartitionSpec = PartitionSpec()
    root: str | None = None  # fashion_mnist folder of idx .gz files
    path: str | None = None  # parquet: one file to partition, or a template with {client}
    test_path: str | None = None  # parquet: held-out test set for central evaluation
    features: list[str] | None = None  # parquet: feature columns (default: every column but label)
    label: str = "label"
    shape: list[int] | None = None  # parquet: input shape, e.g. [1, 28, 28]
    num_classes: Annotated[int, Field(ge=2)] | None = None
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2  # digits: held-out share
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # built-in client: share of each client's rows it
    # keeps out of training for federated evaluation
    samples_per_client: Annotated[int, Field(ge=1)] = 32  # synthetic: rows per client
    skew: SkewSpec | None = None  # feature skew of the clients' inputs (not the driver's test set)


class TrainSpec(_Strict):
    epochs: Annotated[int, Field(ge=0)] = 1  # 0: no local training (a dry run of the round machinery)
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    threads: Annotated[int, Field(ge=1)] = 1  # torch and BLAS threads per worker, set before any client code
    # ctx.device of every client (apps/devices.py) and the driver's evaluation: auto, a worker's GPU
    # when it has one (its site's gpus pin, or CUDA_VISIBLE_DEVICES) and torch sees it; cpu: never a GPU
    device: Literal["auto", "cpu"] = "auto"
    keep_clients: Annotated[int, Field(ge=1)] = 64  # client objects a worker keeps (LRU); more are rebuilt from state
    # seconds a client's task may run at its site before it is ended there (its worker is given
    # back for the site's other clients); default: round.deadline_s
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    output_mb: Annotated[float, Field(gt=0)] = 16.0  # stdout/stderr a worker keeps (RUN_DIR/logs/workers)


# The strategy block: `name` picks the strategy, whose Options class holds its keys.
StrategySpec = Annotated[Union[tuple(option_models())], Field(discriminator="name")]  # noqa: UP007 - built at runtime


class RoundSpec(_Strict):
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    min_clients: Annotated[int, Field(ge=1)] = 1
    deadline_s: Annotated[float, Field(gt=0)] = 600.0
    retries: Annotated[int, Field(ge=0)] = 1  # times a round that missed its quorum is run again
    task_retries: Annotated[int, Field(ge=0)] = 1  # Parsl retries of a task, for transient causes only
    pace: Literal["epochs", "deadline"] = "epochs"  # deadline: local steps sized so clients finish together
    pace_quantile: Annotated[float, Field(gt=0, le=1)] = 0.5  # the round's target time among clients' full work
    pace_min_fraction: Annotated[float, Field(gt=0, le=1)] = 0.25  # a paced client does at least this share
    pace_max_fraction: Annotated[float, Field(ge=1)] = 1.0  # ... and at most this multiple of its full work
    select: Literal["random", "deadline"] = "random"  # deadline: skip clients predicted to miss deadline_s
    explore_after: Annotated[int, Field(ge=1)] = 5  # a client skipped this many rounds is tried again
    late: Literal["drop", "carry"] = "drop"  # an update past the deadline: ignored, or joins a later round
    absent: Literal["drop", "reuse"] = "drop"  # reuse: a client that did not answer counts its last update
    staleness_exponent: Annotated[float, Field(ge=0)] = 0.5  # carried/reused weight (1 + staleness) ** -exponent
    max_staleness: Annotated[int, Field(ge=1)] = 2  # carried/reused updates older than this are dropped
    eval_every: Annotated[int, Field(ge=1)] = 1
    # federated evaluation: clients evaluate the new global model on their own held-out data
    federated_every: Annotated[int, Field(ge=0)] = 0  # every N rounds (and the last); 0: never
    federated_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0  # share of all clients asked
    show: str | None = None  # the rounds-table column the progress line shows (e.g. fed_rmse)
    max_update_norm: Annotated[float, Field(gt=0)] | None = None  # reject updates farther from the global model
    # the example count is the aggregation weight: reject a claim above max_examples, or above
    # examples_growth times what the client answered before (its data may grow, not jump)
    max_examples: Annotated[int, Field(ge=1)] | None = None
    examples_growth: Annotated[float, Field(ge=1)] = 2.0
    # site: an aggregation app at each site sums its clients' updates; one partial per site
    # travels to the driver (flow/rounds/twotier.py). flat: every client's update does
    aggregate: Literal["flat", "site"] = "flat"
    site_deadline_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.9  # the site aggregator's share of deadline_s
    # after a stop (SIGTERM), how long the round in progress may still take; then the run stops
    # without it. 25 s fits Slurm's default KillWait (30 s) and systemd's stop timeout (90 s)
    stop_wait_s: Annotated[float, Field(ge=0)] = 25.0


# A site's executor block: `kind` picks the module under fedgrid.executors, whose Spec holds the
# kind's options (so each kind documents and validates its own keys in one place).
ExecutorSpec = Annotated[Union[tuple(specs())], Field(discriminator="kind")]  # noqa: UP007 - built at runtime


class SiteSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    executor: ExecutorSpec = Field(default_factory=lambda: kind_module("htex").Spec())
    clients: Annotated[int, Field(ge=1)] | None = None
    data: dict[str, Any] = Field(default_factory=dict)  # per-site overrides of the data block
    # round.aggregate: site: where this site's clients leave their updates for its aggregator (a
    # path the site reads fast: node-local or its parallel file system); default: the run's store
    store: str | None = None
    # clients a train task carries (apps/cohort.py): auto sizes tasks from the clients' measured
    # training times so Parsl's per-task cost is amortized; 1 is one task per client
    cohort: Literal["auto"] | Annotated[int, Field(ge=1, le=4096)] = "auto"

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

    site: str | None = None  # every client of this site ...
    clients: list[int] | None = None  # ... or these client ids (neither: every client)
    fail_p: Annotated[float, Field(ge=0, le=1)] = 0.0  # chance per client per round of an exception
    slowdown: Annotated[float, Field(ge=1)] = 1.0  # training takes this many times as long
    delay_s: Annotated[float, Field(ge=0)] = 0.0  # and then this many seconds more (a slow link, a busy node)
    raise_at: list[int] = Field(default_factory=list)  # rounds in which the client raises
    kill_worker_at: list[int] = Field(default_factory=list)  # rounds in which the worker process dies (once)
    lost_from: Annotated[int, Field(ge=1)] | None = None  # the site's workers are gone from this round ...
    lost_until: Annotated[int, Field(ge=1)] | None = None  # ... and come back at this round (none: never)
    scale_update: float | None = None  # a bad client: sends G + scale * (its update - G); -10 flips and blows it up
    # rounds in which the client, once trained, keeps its answer until the driver has moved on without
    # it (the next round has started, or this one is checkpointed): late for certain, and it arrives
    # while the next round runs (under FedBuff: stale for certain); or until the file
    # <run_dir>/faults/release exists (a drill released by hand). Then delay_s as usual
    hold_at: list[int] = Field(default_factory=list)

    def hits(self, client: int, site: str) -> bool:
        """Whether this rule applies to a client (hosted at `site`)."""
        if self.site is not None and self.site != site:
            return False
        return self.clients is None or client in self.clients


class CheckpointSpec(_Strict):
    dir: str = "runs/{name}"
    keep: Annotated[int, Field(ge=0)] = 0  # 0 keeps every round file
    # a Unix group that may read the run directory, never write it (directories 2750, files 0640);
    # unset: owner-only (0700/0600), and a run directory shared before is closed again
    share_group: str | None = None


class StoreSpec(_Strict):
    """The data plane: where params go when they are too big to ride inside a task."""

    url: str | None = None  # a directory every site can reach, or an fsspec URL; default <run_dir>/store
    mode: Literal["auto", "always", "never"] = "auto"  # auto: by reference above the inline limit
    inline_max_mb: Annotated[float, Field(gt=0)] = 8.0


class CompressionSpec(_Strict):
    """What crosses the wire (apps/codec.py): clients send compressed deltas; the driver may send
    the global model in fp16."""

    up: Literal["none", "fp16", "int8", "topk"] = "none"
    down: Literal["none", "fp16"] = "none"
    topk_fraction: Annotated[float, Field(gt=0, le=1)] = 0.01
    dense_below: Annotated[int, Field(ge=0)] = 1024  # topk: smaller tensors are sent whole (as DGC)
    error_feedback: bool = True  # topk: what is not sent is kept at the site for the next round

    def needs_store(self) -> bool:
        return self.up == "topk" and self.error_feedback

    def up_codec(self) -> str:
        """The codec the clients use: a float32 delta when only the download is compressed."""
        return "fp32" if self.up == "none" and self.down == "fp16" else self.up


class PrivacySpec(_Strict):
    """Client-level differential privacy (flow/privacy/dp.py)."""

    mode: Literal["central", "local"] = "central"
    clip: Annotated[float, Field(gt=0)]  # L2 bound on each client's delta
    noise_multiplier: Annotated[float, Field(gt=0)]  # z: noise std in units of the clip
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    epsilon_budget: Annotated[float, Field(gt=0)] | None = None  # stop before epsilon would pass it


class SecAggSpec(_Strict):
    """Secure aggregation (flow/privacy/secagg.py): the driver sees only the sum of masked updates."""

    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5  # t = ceil(threshold * clients in the round), >= 2
    frac_bits: Annotated[int, Field(ge=8, le=40)] = 24  # fixed-point precision in the ring Z_2^64
    key_dir: str | None = None  # where sites keep their per-round secrets (default: the site's temp dir)


class ScheduleSpec(_Strict):
    """Recurring training (``fedgrid schedule``): at each firing of ``cron`` the job continues from
    its newest checkpoint for ``rounds_per_run`` more rounds. Five fields (minute hour day month
    weekday) as in crontab, or six with seconds last (``*/10 * * * * *``: every 10 s)."""

    cron: str
    rounds_per_run: Annotated[int, Field(ge=1)] = 1

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"not a cron expression: {v!r} (e.g. '0 2 * * *' for 02:00 every day)")
        return v


class MLflowSpec(_Strict):
    """An MLflow tracking server or database; without `uri`, a SQLite file in <run_dir>/mlflow."""

    uri: str | None = None  # http://host:5000, sqlite:///path/mlflow.db, postgresql://...
    experiment: str | None = None  # default: the job's name


class TrackingSpec(_Strict):
    """Experiment tracking (flow/tracking): every round's row mirrored to MLflow and/or TensorBoard."""

    mlflow: MLflowSpec | None = None
    tensorboard: bool = False  # event files in <run_dir>/tensorboard
    retry_s: Annotated[float, Field(gt=0)] = 1.0  # first wait before retrying a tracker that failed (doubles)
    drain_s: Annotated[float, Field(ge=0)] = 60.0  # how long the end of a run waits for a tracker to catch up

    @field_validator("mlflow", mode="before")
    @classmethod
    def _mlflow_shorthand(cls, v: Any) -> Any:
        """`mlflow: true` means the local SQLite store; `false` none."""
        return ({} if v else None) if isinstance(v, bool) else v


class ModelSpec(_Strict):
    name: str = "cnn"  # logreg | mlp | cnn | package.module:factory
    kwargs: dict[str, Any] = Field(default_factory=dict)


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
    epochs: Annotated[int, Field(ge=1)] = 1  # epochs of the personal model a round


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
    # FedRep (Collins et al., ICML 2021): each round first trains only the personal layers for this
    # many epochs, the shared ones frozen, then only the shared ones for train.epochs (0: FedPer,
    # both together)
    head_epochs: Annotated[int, Field(ge=0)] = 0
    ditto: DittoSpec | None = None


FLOWER_CLIENT = "fedgrid.apps.flower.client:FlowerClient"  # the class that runs a Flower ClientApp at a site
_OBJECT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class ClientSpec(_Strict):
    """The code that runs at each site: ``path`` names a fedgrid client class the sites can import
    (fedgrid.client), ``options`` reach it as ``ctx.options``; or ``flower`` names a Flower
    ``ClientApp`` object that fedgrid calls unchanged (apps/flower), with ``initial`` the function
    giving its initial model and ``run_config`` its ``Context.run_config``. Without a client block a
    job runs the built-in client (the model, data and train blocks)."""

    path: Annotated[str | None, Field(pattern=_OBJECT_PATH)] = None
    options: dict[str, Any] = Field(default_factory=dict)
    # directories put first on sys.path before the class is imported, by the driver's check and by
    # every worker: a package the sites' environments do not install (relative: the job file's folder)
    python_path: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    flower: Annotated[str | None, Field(pattern=_OBJECT_PATH)] = None  # pkg.module:app, a flwr ClientApp
    initial: Annotated[str | None, Field(pattern=_OBJECT_PATH)] = None  # pkg.module:function -> initial arrays
    run_config: dict[str, bool | int | float | str] = Field(default_factory=dict)  # Flower's Context.run_config

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
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "job"
    rounds: Annotated[int, Field(ge=1)] = 10
    seed: int = 0
    model: ModelSpec = ModelSpec()
    client: ClientSpec | None = None
    personal: PersonalSpec | None = None
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    strategy: StrategySpec = Field(default_factory=lambda: STRATEGIES[DEFAULT].Options())
    round: RoundSpec = RoundSpec()
    sites: list[SiteSpec] = Field(default_factory=lambda: [SiteSpec(name="here")])
    checkpoint: CheckpointSpec = CheckpointSpec()
    store: StoreSpec = StoreSpec()
    faults: list[FaultSpec] = Field(default_factory=list)
    compression: CompressionSpec = CompressionSpec()
    privacy: PrivacySpec | None = None
    secagg: SecAggSpec | None = None
    schedule: ScheduleSpec | None = None
    tracking: TrackingSpec | None = None
    monitoring: bool = False  # Parsl's MonitoringHub, into <run_dir>/monitoring.db (extra fedgrid[monitoring])

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
        key = {"model": self.model.model_dump(), "strategy": self.strategy.model_dump()}
        if self.client is not None:  # (absent for the built-in client: old checkpoints still match)
            key["client"] = self.client.code
        if self.personal is not None:  # what is personal is part of what the checkpoint's model means
            key["personal"] = self.personal.model_dump()
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

