"""The job file: one YAML document validated into typed settings.

Every way a user can get a job wrong is turned into a :class:`ConfigError` that names the file, the
dotted key and what was expected, so the CLI can print one line and exit 2 instead of a traceback.
Validation is pydantic's (``extra="forbid"`` catches misspelled keys); the cross-field rules that
pydantic cannot express alone (quorum against client count, sites against clients) live in
:func:`_check_consistency`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedgrid.executors import KINDS, kind_module, specs
from fedgrid.flow.strategies import STRATEGIES, option_models


class ConfigError(Exception):
    """A problem in a job file that the user must fix; printed as one line, exit code 2."""

    def __init__(self, file: str | Path, key: str, expected: str):
        self.file, self.key, self.expected = str(file), key, expected
        super().__init__(f"{file}: {key}: {expected}" if key else f"{file}: {expected}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PartitionSpec(_Strict):
    """How a pooled dataset is split into clients (simulation and `fedgrid partition`)."""

    kind: Literal["iid", "dirichlet", "shards", "natural", "none"] = "iid"
    alpha: Annotated[float, Field(gt=0)] = 0.5
    shards_per_client: Annotated[int, Field(ge=1)] = 2
    column: str | None = None
    min_size: Annotated[int, Field(ge=0)] = 2


class DataSpec(_Strict):
    """What data each client trains on and what the driver evaluates on."""

    dataset: Literal["digits", "fashion_mnist", "parquet", "synthetic"] = "digits"
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
    samples_per_client: Annotated[int, Field(ge=1)] = 32  # synthetic: rows per client


class TrainSpec(_Strict):
    epochs: Annotated[int, Field(ge=0)] = 1  # 0: no local training (a dry run of the round machinery)
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    threads: Annotated[int, Field(ge=1)] = 1  # torch threads per worker


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
    max_update_norm: Annotated[float, Field(gt=0)] | None = None  # reject updates farther from the global model


# A site's executor block: `kind` picks the module under fedgrid.executors, whose Spec holds the
# kind's options (so each kind documents and validates its own keys in one place).
ExecutorSpec = Annotated[Union[tuple(specs())], Field(discriminator="kind")]  # noqa: UP007 - built at runtime


class SiteSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    executor: ExecutorSpec = Field(default_factory=lambda: kind_module("htex").Spec())
    clients: Annotated[int, Field(ge=1)] | None = None
    data: dict[str, Any] = Field(default_factory=dict)  # per-site overrides of the data block

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

    def hits(self, client: int, site: str) -> bool:
        """Whether this rule applies to a client (hosted at `site`)."""
        if self.site is not None and self.site != site:
            return False
        return self.clients is None or client in self.clients


class CheckpointSpec(_Strict):
    dir: str = "runs/{name}"
    keep: Annotated[int, Field(ge=0)] = 0  # 0 keeps every round file


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
    """Client-level differential privacy (flow/privacy.py)."""

    mode: Literal["central", "local"] = "central"
    clip: Annotated[float, Field(gt=0)]  # L2 bound on each client's delta
    noise_multiplier: Annotated[float, Field(gt=0)]  # z: noise std in units of the clip
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    epsilon_budget: Annotated[float, Field(gt=0)] | None = None  # stop before epsilon would pass it


class SecAggSpec(_Strict):
    """Secure aggregation (flow/secagg.py): the driver sees only the sum of masked updates."""

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


class ModelSpec(_Strict):
    name: str = "cnn"  # logreg | mlp | cnn | package.module:factory
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Job(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "job"
    rounds: Annotated[int, Field(ge=1)] = 10
    seed: int = 0
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    strategy: StrategySpec = Field(default_factory=lambda: STRATEGIES["fedavg"].Options())
    round: RoundSpec = RoundSpec()
    sites: list[SiteSpec] = Field(default_factory=lambda: [SiteSpec(name="here")])
    checkpoint: CheckpointSpec = CheckpointSpec()
    store: StoreSpec = StoreSpec()
    faults: list[FaultSpec] = Field(default_factory=list)
    compression: CompressionSpec = CompressionSpec()
    privacy: PrivacySpec | None = None
    secagg: SecAggSpec | None = None
    schedule: ScheduleSpec | None = None
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
        return out

    def clients_per_round(self) -> int:
        return max(self.round.min_clients, math.ceil(self.round.fraction * self.data.clients))

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: the model and the strategy."""
        key = {"model": self.model.model_dump(), "strategy": self.strategy.model_dump()}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# -- loading ------------------------------------------------------------------------------------


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in _path(err["loc"]))


def _path(loc: tuple[Any, ...]) -> list[Any]:
    """The user's key path: pydantic adds validator names and the union tag (`executor.slurm.x`)."""
    out: list[Any] = []
    for p in loc:
        if str(p).startswith("function-"):
            continue
        if out and out[-1] == "executor" and p in KINDS:
            continue
        out.append(p)
    return out


def _describe(err: dict[str, Any]) -> str:
    t, msg, val = err["type"], err["msg"], err.get("input")
    if t == "extra_forbidden":
        return "unknown key"
    if t == "missing":
        return "required key is missing"
    if t == "union_tag_invalid":
        ctx = err.get("ctx", {})
        what, names = (("strategy", STRATEGIES) if ctx.get("discriminator") == "'name'" else ("executor kind", KINDS))
        return f"unknown {what} {ctx.get('tag')!r}; expected one of {', '.join(names)}"
    if t == "literal_error":
        return f"{msg.replace('Input should be', 'expected')}, got {val!r}"
    msg = msg.replace("Input should be", "expected").replace("Value error, ", "")
    if t == "value_error" and (isinstance(val, dict | list) or "got " in msg):
        return msg  # our validators already say what they got
    shown = repr(val) if not isinstance(val, dict | list) else type(val).__name__
    return f"{msg}, got {shown}"


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Keys valid at the parent of `loc`, to list them when a key is unknown."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or str(part).startswith("function-"):
            continue
        if part in KINDS and cur is model:
            continue
        if part in KINDS:  # the union tag pydantic puts after `executor`: pick that kind's Spec
            cur = kind_module(part).Spec
            continue
        field = cur.model_fields.get(part) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        args = [a for x in (ann, *getattr(ann, "__args__", ())) for a in (x, *getattr(x, "__args__", ()))]
        cand = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cand:
            return []
        cur = cand[0]
    return sorted(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def apply_overrides(raw: dict[str, Any], overrides: list[str], file: str | Path) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (``8``, ``true``, ``[1,2]``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(file, item, "--set expects dotted.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        cur: Any = raw
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(cur, list):
                if not p.isdigit() or int(p) >= len(cur):
                    raise ConfigError(file, key, f"index {p!r} is not a valid list index (0..{len(cur) - 1})")
                if last:
                    cur[int(p)] = yaml.safe_load(value)
                else:
                    cur = cur[int(p)]
            elif isinstance(cur, dict):
                if last:
                    cur[p] = yaml.safe_load(value)
                else:
                    if cur.get(p) is None:
                        cur[p] = {}
                    elif not isinstance(cur[p], dict | list):
                        raise ConfigError(file, key, f"{'.'.join(parts[:i + 1])} is a value, not a mapping; "
                                          "cannot set a key inside it")
                    cur = cur[p]
            else:
                raise ConfigError(file, key, "cannot set a key inside a scalar value")
    return raw


def parse_job(raw: Any, file: str | Path = "<job>", overrides: list[str] | None = None) -> Job:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file, "", f"expected a mapping of job keys at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [], file)
    try:
        job = Job.model_validate(raw)
    except ValidationError as e:
        errs = e.errors()
        # a misspelled key shows up twice: as unknown, and as the required key it was meant to be
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        what = _describe(err)
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(Job, tuple(err["loc"]))
            if valid:
                what += f"; valid keys: {', '.join(valid)}"
        raise ConfigError(file, _loc(err), what) from None
    _check_consistency(job, file)
    return job


def load_job(path: str | Path, overrides: list[str] | None = None) -> Job:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, "", "job file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(p, "", f"not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    job = parse_job(raw, p, overrides)
    return job


def _check_consistency(job: Job, file: str | Path) -> None:
    names = [s.name for s in job.sites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(file, "sites", f"site names must be unique, {dup} repeated")
    if not job.sites:
        raise ConfigError(file, "sites", "at least one site is required")
    # clients: sites without a count share what is left evenly
    given = sum(s.clients or 0 for s in job.sites)
    open_sites = [s for s in job.sites if s.clients is None]
    if open_sites:
        rest = job.data.clients - given
        if rest < len(open_sites):
            raise ConfigError(file, "sites", f"data.clients ({job.data.clients}) leaves {rest} client(s) "
                              f"for {len(open_sites)} site(s) without a clients count")
        for i, s in enumerate(open_sites):
            s.clients = rest // len(open_sites) + (1 if i < rest % len(open_sites) else 0)
    elif given != job.data.clients:
        raise ConfigError(file, "sites", f"site clients add up to {given}, expected data.clients "
                          f"({job.data.clients})")
    if job.round.min_clients > job.data.clients:
        raise ConfigError(file, "round.min_clients", f"must be <= data.clients ({job.data.clients}), "
                          f"got {job.round.min_clients}")
    _check_data(job, file)
    _check_model(job, file)
    _check_strategy(job, file)
    _check_faults(job, file)


def _check_faults(job: Job, file: str | Path) -> None:
    names = {s.name: s for s in job.sites}
    for i, f in enumerate(job.faults):
        key = f"faults.{i}"
        if f.site is not None and f.site not in names:
            raise ConfigError(file, f"{key}.site", f"no site named {f.site!r}; sites: {', '.join(names)}")
        if f.clients and (bad := [c for c in f.clients if not 0 <= c < job.data.clients]):
            raise ConfigError(file, f"{key}.clients", f"client ids run 0..{job.data.clients - 1}, got {bad}")
        if f.lost_from is not None and f.site is None:
            raise ConfigError(file, f"{key}.lost_from", "a lost site needs `site`")
        if f.lost_until is not None and (f.lost_from is None or f.lost_until <= f.lost_from):
            raise ConfigError(file, f"{key}.lost_until", "must come after lost_from")
        hit = {s for c, s in enumerate(job.client_sites()) if f.hits(c, s)}
        if (f.kill_worker_at or f.lost_from) and (local := sorted(s for s in hit if names[s].executor.kind == "local")):
            raise ConfigError(file, f"{key}", f"killing workers needs worker processes; site(s) {local} are "
                              "`local` threads in the driver (use htex)")


def _check_strategy(job: Job, file: str | Path) -> None:
    remote = [s.name for s in job.sites if not on_this_machine(s)]
    if (keepers := job.client_state()) and remote and not job.store.url:
        raise ConfigError(file, "store.url", f"{' and '.join(keepers)} in the store, and sites {remote} run "
                          f"elsewhere: set store.url to a location every site can reach (a shared path or s3://...)")
    if job.compression.up_codec() != "none" and job.round.late == "carry":
        raise ConfigError(file, "round.late", "a compressed update is a delta from its round's model, which a "
                          "carried late update no longer has: use round.late: drop with compression")
    if job.privacy is not None:
        from fedgrid.flow.privacy import MEAN_BASED

        if job.strategy.name not in MEAN_BASED:
            raise ConfigError(file, "privacy", f"DP-FedAvg noises the clients' mean; strategy {job.strategy.name} "
                              f"does not take one. Expected one of {', '.join(MEAN_BASED)}")
        if job.round.absent == "reuse":
            raise ConfigError(file, "round.absent", "a reused update would be counted again without being "
                              "accounted for: use round.absent: drop with privacy")
    if job.secagg is not None:
        from fedgrid.flow.privacy import MEAN_BASED

        why = ("strategy" if job.strategy.name not in MEAN_BASED else
               "compression.up" if job.compression.up != "none" else
               "privacy.mode" if job.privacy is not None and job.privacy.mode == "central" else
               "round.max_update_norm" if job.round.max_update_norm is not None else
               "round.late" if job.round.late == "carry" else
               "round.absent" if job.round.absent == "reuse" else None)
        if why:
            raise ConfigError(file, why, "secure aggregation shows the driver only the sum of the updates, so it "
                              f"works with {', '.join(MEAN_BASED)}, without update compression, central DP, a "
                              "norm bound, carried or reused updates (local DP is fine)")
    if job.strategy.name == "scaffold" and job.train.momentum:
        raise ConfigError(file, "train.momentum", f"scaffold's control-variate update assumes plain SGD at the "
                          f"clients; expected 0, got {job.train.momentum:g}")
    if STRATEGIES[job.strategy.name].asynchronous and job.round.pace == "deadline":
        raise ConfigError(file, "round.pace", f"pacing sizes the clients of a synchronous round; strategy "
                          f"{job.strategy.name} has no rounds to pace (use round.pace: epochs)")


def on_this_machine(site: SiteSpec) -> bool:
    """A site whose processes run here (so its data paths can be checked from here)."""
    ex = site.executor
    return ex.kind in ("local", "htex") or (ex.kind == "globus_compute" and getattr(ex, "emulate", False))


def _check_data(job: Job, file: str | Path) -> None:
    for site in job.sites:
        d = job.site_data(site.name)
        pre = "data" if not site.data else f"sites.{site.name}.data"
        if not on_this_machine(site):  # its paths are on the site's filesystem; the site checks them
            if d.dataset == "parquet" and not d.path:
                raise ConfigError(file, f"{pre}.path", "dataset 'parquet' needs a path (a file, or a "
                                  "template with {client})")
            continue
        if d.dataset == "fashion_mnist":
            from fedgrid.apps.datasets import FMNIST_DEFAULT_ROOT, fashion_mnist_missing

            missing = fashion_mnist_missing(d.root or FMNIST_DEFAULT_ROOT)
            if missing:
                raise ConfigError(file, f"{pre}.root", missing)
        if d.dataset == "parquet":
            if not d.path:
                raise ConfigError(file, f"{pre}.path", "dataset 'parquet' needs a path (a file, or a "
                                  "template with {client})")
            per_client = "{client" in d.path
            if per_client and d.partition.kind not in ("none", "iid"):
                raise ConfigError(file, f"{pre}.partition.kind", "per-client files ({client} in path) "
                                  f"are already partitioned; expected 'none', got {d.partition.kind!r}")
            paths = ([d.path.format(client=c) for c, s in enumerate(job.client_sites()) if s == site.name]
                     if per_client else [d.path])
            for pth in paths:
                if not Path(pth).is_file():
                    raise ConfigError(file, f"{pre}.path", f"parquet file not found: {pth}")
        if d.partition.kind == "natural" and not d.partition.column:
            raise ConfigError(file, f"{pre}.partition.column", "partition kind 'natural' needs a column")
    d = job.data
    if d.dataset == "parquet" and d.test_path and not Path(d.test_path).is_file():
        raise ConfigError(file, "data.test_path", f"parquet file not found: {d.test_path}")


def _check_model(job: Job, file: str | Path) -> None:
    name = job.model.name
    from fedgrid.apps.models import BUILTIN

    if name in BUILTIN:
        return
    if ":" not in name:
        raise ConfigError(file, "model", f"expected one of {sorted(BUILTIN)} or 'package.module:factory', "
                          f"got {name!r}")
    import importlib

    mod, _, attr = name.partition(":")
    try:
        m = importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError(file, "model", f"cannot import module {mod!r}: {e}") from None
    if not callable(getattr(m, attr, None)):
        raise ConfigError(file, "model", f"module {mod!r} has no callable {attr!r}")
