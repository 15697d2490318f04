"""The stages before round one: the run directory made ready, the model built, the store opened,
and the newest checkpoint turned back into a model (flow/rounds/runner.py calls them in order)."""

from __future__ import annotations

import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedgrid.apps import datasets
from fedgrid.apps.records import ClientCode
from fedgrid.apps.store import Store
from fedgrid.apps.task import client_code, model_spec
from fedgrid.flow.config import ConfigError, Job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist import dataplane
from fedgrid.flow.persist.runlock import reap
from fedgrid.flow.persist.table import RoundsTable, rows_path
from fedgrid.flow.rounds.outcome import ResumeRefused
from fedgrid.flow.rounds.progress import RunProgress
from fedgrid.flow.rounds.writer import ALL_ROUNDS, Evaluate

Params = dict[str, np.ndarray]


@dataclass
class Start:
    """Where the run starts: the job (its target already resolved for ``--rounds +N``), the newest
    valid checkpoint, and the rounds table, on disk exactly rounds 1..done."""

    job: Job
    state: ckpt.RoundState | None
    table: RoundsTable

    @property
    def done(self) -> int:
        return self.state.round if self.state else 0

    @property
    def complete(self) -> bool:
        return self.state is not None and self.done >= self.job.rounds


def archive_rounds(run_dir: Path) -> Path | None:
    """Move earlier rounds aside (never delete a user's results) so a --fresh run starts clean."""
    items = [p for p in (run_dir / "rounds", rows_path(run_dir)) if p.exists()]
    if not items:
        return None
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
    dest = run_dir / "archive" / stamp
    while dest.exists():  # a second --fresh within the same second: its own folder, never a merge
        n += 1
        dest = run_dir / "archive" / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for p in items:
        shutil.move(str(p), dest / p.name)
    return dest


def _resume_point(job: Job, run_dir: Path, progress: RunProgress) -> ckpt.RoundState | None:
    state, skipped = ckpt.latest_valid(run_dir)
    for path, why in skipped:
        progress.say(f"warning: skipped {path.name}: {why} (moved to rounds/corrupt/)")
    if state is not None and state.fingerprint != job.fingerprint():
        old = state.job
        raise ResumeRefused(
            f"{run_dir} holds rounds of a job with a different model or strategy (checkpoint: "
            f"model={old.get('model', {}).get('name')} strategy={old.get('strategy', {}).get('name')}; this job: "
            f"model={job.model.name} strategy={job.strategy.name}); run with --fresh to start over "
            f"(earlier rounds are moved to {run_dir / 'archive'}) or use another checkpoint.dir")
    return state


def prepare(job: Job, run_dir: Path, fresh: bool, more: int | None, progress: RunProgress) -> Start:
    """Stage 1: orphans reaped, --fresh archived, the resume point found, the rows reconciled."""
    if (n := reap(run_dir)):
        progress.say(f"ended {n} process(es) left behind by an earlier driver of this run")
    if (n := ckpt.remove_temp_files(run_dir)):
        progress.say(f"removed {n} temp file(s) of writes an earlier driver did not finish")
    if fresh and (dest := archive_rounds(run_dir)):
        progress.say(f"--fresh: earlier rounds moved to {dest}")
    state = _resume_point(job, run_dir, progress)
    done = state.round if state else 0
    if more is not None:
        job = job.model_copy(update={"rounds": done + more})
    start = Start(job, state, RoundsTable.open(run_dir, done))
    if not start.complete:
        progress.resume_at(done, job.rounds)
        if state:
            progress.say(f"resuming {job.name} after round {done} from {run_dir}")
    return start


@dataclass
class ModelParts:
    """The driver's half of the model: the client code the sites run (`code`), the driver's own
    copy of the built-in model (for central evaluation and to check a checkpoint fits; None for
    a job's own client), the central test set (None when the data never leaves the sites), the
    initial params, each tensor's kind (apps/kinds.py; empty: inferred where needed), and the
    device central evaluation runs on (the driver's GPU when it has one; apps/devices.py)."""

    code: ClientCode
    model: Any
    test: datasets.Arrays | None
    params: Params
    kinds: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"

    def evaluator(self) -> Evaluate | None:
        test = self.test
        if test is None or self.model is None:
            return None
        from fedgrid.apps.evaluate import evaluate

        # moved when first used, on the writer's thread: a run that never evaluates starts no CUDA
        return lambda params: evaluate(self.model.to(self.device), params, test)


def build_model(job: Job) -> ModelParts:
    """Stage 3a: what the sites run and the initial params (seeded by the job)."""
    if job.client is not None:
        return _client_model(job)
    import torch

    from fedgrid.apps.builtin import PATH
    from fedgrid.apps.devices import device
    from fedgrid.apps.kinds import param_kinds
    from fedgrid.apps.models import build, get_params

    torch.set_num_threads(1)
    data = job.data.model_dump()
    test = datasets.load_test(data, job.seed)
    shape, num_classes = datasets.meta(data, test)
    torch.manual_seed(job.seed)
    try:
        model = build(job.model.name, shape, num_classes, job.model.kwargs)
    except Exception as e:  # noqa: BLE001 - a user's model factory may raise anything; one line, exit 2
        if ":" not in job.model.name:
            raise
        raise ConfigError("<job>", "model", f"{job.model.name} raised {type(e).__name__}: {e} when called with "
                          f"input_shape={tuple(shape)}, num_classes={num_classes}") from None
    spec = model_spec(job.model.name, shape, num_classes, job.model.kwargs)
    code = client_code(PATH, {"model": spec, "threads": job.train.threads, "batch_size": job.train.batch_size})
    return ModelParts(code, model, test, get_params(model), dict(param_kinds(model)), device(job.train.device))


def _client_model(job: Job) -> ModelParts:
    """A job's own client: its init_params() on the driver (client 0's context, no data read), and
    its tensors' kinds from its optional param_kinds() (apps/kinds.py), the rest inferred."""
    from fedgrid.apps.client import Context
    from fedgrid.apps.kinds import infer_kinds
    from fedgrid.apps.train import ClientCodeError, call_client, load_class

    assert job.client is not None and job.client.path is not None
    path, key, code, options = job.client.path, job.client.key, job.client.code, job.client.site_options(job.name)
    site = job.client_sites()[0]
    ctx = Context(client=0, clients=job.data.clients, site=site, seed=job.seed,
                  data=job.site_data(site).model_dump(), options=options)
    try:
        client = call_client(load_class(path), ctx)
        params = call_client(client.init_params)
        base = call_client(client.base) if hasattr(client, "base") else None
        said = call_client(client.param_kinds) if callable(getattr(client, "param_kinds", None)) else None
    except ClientCodeError as e:
        source = "client.initial" if job.client.initial else "init_params()"
        raise ConfigError("<job>", key, f"{code}: {source} on the driver raised {e}") from None
    if not isinstance(params, dict) or not params or not all(isinstance(v, np.ndarray) for v in params.values()):
        raise ConfigError("<job>", key, f"{code}: init_params() returned {type(params).__name__}, "
                          "expected an ordered dict of numpy arrays (the model's state_dict order)")
    try:
        if said is not None and not isinstance(said, dict):
            raise ValueError(f"returned {type(said).__name__}, expected a dict of name -> kind")
        kinds = dict(infer_kinds(params, said))
    except ValueError as e:
        raise ConfigError("<job>", key, f"{code}: param_kinds(): {e}") from None
    spec = client_code(path, options)
    if base is not None:  # every task carries the base's digest; each site checks its own copy against it
        try:
            spec["base"] = {"name": str(base.name), "path": str(base.path), "sha256": base.sha256()}
        except OSError as e:
            raise ConfigError("<job>", "client.options", f"{path}: the base weights on the driver: {e}") from None
    if job.client.flower:  # imported by each worker before the adapter runs: an ImportError stays one
        spec["imports"] = [job.client.flower.partition(":")[0]]
    return ModelParts(spec, None, None, OrderedDict(params), kinds)


def restore_params(parts: ModelParts, state: ckpt.RoundState, run_dir: Path) -> Params:
    """Stage 4: the checkpoint's params, checked against this job's model."""
    from fedgrid.apps.models import set_params

    try:
        base, had = parts.code.get("base"), state.row.get("base_sha256")
        if base is not None and had and had != base["sha256"]:
            raise ValueError(f"the checkpoint fine-tunes base sha256 {had[:12]}, the base at {base['path']} is "
                             f"{base['sha256'][:12]}")
        if parts.model is not None:
            set_params(parts.model, state.params)
        elif list(state.params) != list(parts.params):
            raise ValueError(f"parameter names differ: expected {list(parts.params)}, got {list(state.params)}")
    except ValueError as e:
        raise ResumeRefused(f"{run_dir}: checkpoint of round {state.round} does not fit this job's model "
                            f"({e}); run with --fresh to start over") from None
    return state.params


def open_store(job: Job, run_dir: Path, params: Params, progress: RunProgress,
               needed: bool = False, first: bool = False) -> tuple[dataplane.TransferPlan, Store | None]:
    """Decide how params travel; open (and clear out) this run's area of the store if one is used
    (`needed`: the strategy keeps client state there, whatever the params do; `first`: no round
    is checkpointed yet, so no client state is referred to either)."""
    nbytes = int(sum(a.nbytes for a in params.values()))
    tp = dataplane.plan(job, nbytes, run_dir)
    url = tp.store_url or dataplane.store_url(job.store.url or str(run_dir / "store"))
    if not (tp.any_ref() or needed):
        return tp, None
    if not job.store.url:  # an explicit store was probed before the sites started
        dataplane.check_store(url)
    store = Store(dataplane.run_area(url, job, run_dir))
    # round objects a crashed driver of this run left behind (other runs' areas are theirs; the
    # strategy's per-client state under state/ is kept: the checkpoint refers to it)
    store.sweep(ALL_ROUNDS)
    if first:
        store.delete("state")
    refs = [s for s, r in tp.by_ref.items() if r]
    if refs:
        progress.say(f"params ({nbytes / 2**20:.1f} MB) travel by reference to {', '.join(refs)} through {store.url}")
    return tp, store
