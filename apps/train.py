"""The train app body: runs at a client's site, inside a persistent Parsl worker.

It runs the job's client code (:mod:`fedgrid.apps.client`; fedgrid's own loop is
:mod:`fedgrid.apps.builtin`) and does everything around it: fetching the global params, fault
drills, the checks on what the client returned, SCAFFOLD's variate, local DP, secure masking or
compression, sending the update back inline or through the store, and the timings.

A worker process lives across rounds (HTEX), so one client object per client is kept in module
state and whatever it loads once (torch, its data, its model) is paid once per process.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, cast

import numpy as np

from fedgrid.apps import codec, devices, faults, guard, sitestate
from fedgrid.apps.client import Context, Evaluation, Fit, Work
from fedgrid.apps.memo import Last
from fedgrid.apps.records import CompressSettings, Extras, TrainSettings
from fedgrid.apps.store import Ref, Store, fetch
from fedgrid.apps.task import TrainTask
from fedgrid.apps.update import ClientEvaluation, ClientUpdate

_GLOBAL: dict[str, Any] = {}  # sha256 -> params: the round's global model, fetched once per worker
_GLOBAL_LOCK = threading.Lock()


class ClientCodeError(RuntimeError):
    """The client's own code raised: its type, message and where, with the whole remote
    traceback in `remote_traceback` (the driver logs it; the failure reason keeps the gist)."""

    def __init__(self, message: str, remote_traceback: str):
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __reduce__(self):  # noqa: ANN204 - pickled back to the driver with its traceback
        return (ClientCodeError, (str(self), self.remote_traceback))


def call_client(method: Any, *args: Any) -> Any:
    """Call the client's code; what it raises becomes a ClientCodeError naming where."""
    try:
        return method(*args)
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - any error of the user's code is
        # this client's failure; sys.exit() in it must not end the worker that serves every client
        where = _where(traceback.extract_tb(e.__traceback__))
        raise ClientCodeError(f"{type(e).__name__}: {e}{where}", traceback.format_exc()) from None


_APPS = os.path.dirname(os.path.abspath(__file__))
_LIBRARIES = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}", f"{os.sep}lib{os.sep}python")


def _where(tb: traceback.StackSummary) -> str:
    """Where the client's own code raised: the deepest frame outside fedgrid and installed
    libraries (a Flower handler, not flwr's dispatch; the user's line that called numpy, not
    numpy's), else the deepest frame."""
    def own(f: traceback.FrameSummary) -> bool:
        path = os.path.abspath(f.filename)
        return not path.startswith(_APPS + os.sep) and not any(lib in path for lib in _LIBRARIES)

    frame = next((f for f in reversed(tb) if own(f)), tb[-1] if tb else None)
    return f" [at {os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}]" if frame else ""


def load_class(path: str, python_path: list[str] | tuple[str, ...] = ()) -> type:
    """The class a ``module:Class`` path names (``fedgrid check`` has already vetted it), imported
    after ``client.python_path`` is on this process's path: the job's code may be a package the
    site's environment does not install. An ImportError is left as it is, not a ClientCodeError:
    the driver's warm-up tells an unimportable client from one whose code raised by it."""
    use_python_path(python_path)
    mod, _, attr = path.partition(":")
    return getattr(importlib.import_module(mod), attr)


def use_python_path(dirs: list[str] | tuple[str, ...]) -> None:
    """Put the directories not yet on sys.path first on it, in order. They stay for the process's
    life: a client module may import its siblings later, at its first train, and one worker serves
    every client of its site."""
    if new := [d for d in dirs if d not in sys.path]:
        sys.path[:0] = new
        importlib.invalidate_caches()  # a finder may have cached that a directory had no such module


def context(task: TrainTask) -> Context:
    return Context(client=task.client, clients=task.clients, site=task.site, seed=task.seed, data=task.data,
                   options=task.code.get("options") or {}, device=devices.device(task.train.get("device") or "auto"))


def _key(task: TrainTask) -> tuple:
    # per thread too: a `local` site runs several clients at once in one process
    return (threading.get_ident(), task.code["path"], task.client, task.clients, task.seed, task.site,
            *_texts(task.data, task.code.get("options") or {}))


_LAST_TEXTS = Last()


def _texts(data: dict[str, Any], options: dict[str, Any]) -> tuple[str, str]:
    """The data block and client options as JSON, for the client's cache key; the clients of a
    cohort share both objects (apps/memo.py: about 0.05 ms a client saved)."""
    return _LAST_TEXTS.get((data, options), (), lambda: (json.dumps(data, sort_keys=True, default=str),
                                                         json.dumps(options, sort_keys=True, default=str)))


def _slot(task: TrainTask) -> sitestate.Slot:
    """This worker's slot for the task's client: its object (made on first use, kept across
    rounds up to ``train.keep_clients`` objects) and the state version the object holds."""
    bound = int(task.train.get("keep_clients") or sitestate.KEEP_CLIENTS)
    return sitestate.slot(_key(task), lambda: _make(task), bound)


def contained(task: TrainTask, what: str):  # noqa: ANN201 - a context manager
    """The task's client code contained at its site (apps/guard.py). A client interrupted at its
    time limit may have been anywhere in its code: its object is dropped, never reused."""
    return guard.guarded(task.guard, task.client, task.round, what, on_timeout=lambda: sitestate.drop(_key(task)),
                         relaunched=task.relaunched)


def _make(task: TrainTask) -> Any:
    cls = load_class(task.code["path"], task.code.get("python_path") or ())
    for module in task.code.get("imports") or ():  # a Flower app's module: its ImportError is not the client's
        importlib.import_module(module)
    return call_client(cls, context(task))


def entered(task: TrainTask) -> tuple[sitestate.Slot, sitestate.Kept]:
    """This worker's slot for the task's client, brought to the state version the task names (and
    `train.threads` applied first: nothing of the client's runs before it), and what it keeps.
    The worker's GPU pin too: a client module that asks torch about CUDA as it is imported fixes
    the process's GPU there (apps/devices.py)."""
    apply_threads(int(task.train.get("threads") or 1))
    devices.restore_pin()
    s = _slot(task)
    return s, sitestate.enter(s, task.keep, lambda: _make(task), call_client)


def site_client(task: TrainTask) -> Any:
    """This worker's object for the task's client, at the state version the task names."""
    return entered(task)[0].client


_THREADS: list[int] = []


def apply_threads(n: int) -> None:
    """``train.threads`` for every client, before any of its code runs: OpenMP/BLAS pools read
    their variables when they start (torch imported later by client code included), torch's own
    pool is set if torch is already in, and BLAS libraries already loaded are limited in place.
    Without it a worker's first task runs with as many threads as the node has cores, on a
    worker that was given one."""
    if [n] == _THREADS:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # numpy's BLAS then keeps the threads it started with
        pass
    _THREADS[:] = [n]


class BaseMismatch(ValueError):
    """This site's copy of the frozen base is not the one the run fine-tunes."""


def check_base(client: Any, want: dict[str, Any] | None) -> None:
    """A fine-tuning client trains only if its site's base weights are the run's (sha256)."""
    if not want:
        return
    mine = call_client(client.base) if hasattr(client, "base") else None
    if mine is None:
        raise BaseMismatch(f"the run fine-tunes base {want['name']!r}, but this site's client names no base()")
    have = mine.sha256()
    if have != want["sha256"]:
        raise BaseMismatch(f"base weights differ: this site's copy of {want['name']!r} at {mine.path} has sha256 "
                           f"{have[:12]}, the run fine-tunes {want['sha256'][:12]}; give this site the same base")


def global_params(params: Any) -> dict[str, np.ndarray]:
    """The task's global params: inline, or fetched (and verified) from the store once per worker."""
    if not isinstance(params, Ref):
        return params
    with _GLOBAL_LOCK:  # clients sharing a worker process (threads) fetch the round's model once
        if params.sha256 not in _GLOBAL:
            _GLOBAL.clear()
            _GLOBAL[params.sha256] = fetch(params)
        return _GLOBAL[params.sha256]


def send_back(task: TrainTask, params: dict[str, np.ndarray],
              extras: Extras) -> tuple[dict[str, np.ndarray], Ref | None]:
    """Inline when small; through the store when over the site's limit (e.g. Globus Compute's 10 MB).
    Under site aggregation always to the site's store, with SCAFFOLD's control delta beside it:
    both stay at the site, and the envelope keeps only the small fields."""
    if task.sum_at_site:
        from fedgrid.apps.siteagg import CONTROL

        control = {CONTROL + k: v for k, v in (extras.pop("scaffold_delta_c", None) or {}).items()}
        # the driver sets the site's store and the key with sum_at_site (flow/rounds/tasks.py)
        return {}, Store(cast(str, task.store)).put({**params, **control}, cast(str, task.update_key))
    above = task.ref_above
    nbytes = sum(a.nbytes for a in params.values())
    if above is None or nbytes <= above or not task.store:
        return params, None
    # the driver sets update_key whenever it sets the store (flow/rounds/tasks.py)
    return {}, Store(task.store).put(params, cast(str, task.update_key))


def warm(task: TrainTask) -> dict[str, Any]:
    """Pay a worker's one-time costs (torch import, data, model) before round 1 needs them.

    Returns what it warmed, so the driver can tell a warm-up that loaded the client's model from
    one that could not."""
    with contained(task, "warm-up"):
        return _warm(task)


def _warm(task: TrainTask) -> dict[str, Any]:
    t0 = time.perf_counter()
    client = site_client(task)
    if hasattr(client, "warm"):
        call_client(client.warm)
    return {"pid": os.getpid(), "seconds": time.perf_counter() - t0, "client": task.code["path"]}


def compress(task: TrainTask, comp: CompressSettings, params: dict[str, np.ndarray],
             start: dict[str, np.ndarray], kept: sitestate.Kept | None) -> dict[str, np.ndarray]:
    """The update as it goes over the wire (apps/codec.py). Top-k's error-feedback residual is
    part of the client's state at its site (`kept`): added in, and what is left kept for the next
    round, which becomes the client's only if the driver aggregates this update."""
    feedback = kept if comp.get("feedback") else None  # where the residual is kept, if it is
    seed = int(np.random.SeedSequence([task.seed, task.round, task.client, 7]).generate_state(1)[0])
    payload, left = codec.encode(params, start, comp["codec"], comp.get("topk_fraction", 0.01),
                                 dict(feedback.residual) if feedback is not None else None, seed,
                                 comp.get("dense_below", 0), comp.get("exact"))
    if feedback is not None:
        feedback.residual = left
    return payload


def outgoing(task: TrainTask, params: dict[str, np.ndarray], start: dict[str, np.ndarray],
             n: int, kept: sitestate.Kept | None = None) -> tuple[dict[str, np.ndarray], str, int]:
    """The update as it leaves the site: local DP's clipping and noise, then secure aggregation's
    mask or the compression codec. Returns the payload, its codec and its wire bytes (0: raw)."""
    if dp := task.dp:  # local DP: the update is clipped and noised before it leaves the site
        from fedgrid.apps.privacy import clip_and_noise

        # from the OS's entropy: the driver, whom local DP protects against, knows every seed
        params, _ = clip_and_noise(params, start, dp.clip, dp.std, np.random.default_rng())
    if sec := task.train.get("secagg"):  # secure aggregation: only the masked vector leaves the site
        from fedgrid.apps.secagg import mask

        return {"masked": mask(sec, task.client, task.round, params, start, n)}, "secagg", 0
    if comp := task.compress:
        payload = compress(task, comp, params, start, kept)
        return payload, comp["codec"], codec.nbytes(payload)
    return params, "none", 0


def checked_fit(fit: Any, start: dict[str, np.ndarray], work: Work) -> Fit:
    """What the client's train returned, checked before anything else reads it: a Fit with
    params of the global model's names and shapes and a positive example count."""
    if not isinstance(fit, Fit):
        raise TypeError(f"client train() returned {type(fit).__name__}, expected fedgrid.client.Fit")
    if not isinstance(fit.params, dict) or list(fit.params) != list(start):
        got = list(fit.params) if isinstance(fit.params, dict) else type(fit.params).__name__
        raise ValueError(f"client train() returned params {got}, expected the global model's {list(start)}")
    fit.params = {k: np.asarray(v) for k, v in fit.params.items()}
    for k, a in fit.params.items():
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"client train() returned param {k!r} of dtype {a.dtype}; expected a numeric array "
                            f"like the global model's ({np.asarray(start[k]).dtype})")
    if isinstance(fit.num_examples, bool) or not isinstance(fit.num_examples, int | np.integer) \
            or fit.num_examples <= 0:
        raise ValueError(f"client train() returned num_examples {fit.num_examples!r}, expected an int > 0")
    if fit.steps is None:
        fit.steps = work.budget(work.batches_per_epoch(int(fit.num_examples)))
    return fit


def _work(task: TrainTask, start: dict[str, np.ndarray], kept: sitestate.Kept | None = None) -> Work:
    # an asynchronous client may train twice from the same global model: `draw` tells the two apart
    seed = np.random.SeedSequence([task.seed, task.round, task.client, *task.draw])
    settings: TrainSettings = task.train
    keep = task.keep or {}
    if keep.get("head_epochs"):  # FedRep: the client's loop trains its head first
        settings = {**settings, "head_epochs": keep["head_epochs"], "personal_layers": keep["personal"]}
    return Work(round=task.round, seed=int(seed.generate_state(1)[0]), settings=settings, global_params=start,
                horizon=task.horizon, _kept=kept)


def batch_job() -> str | None:
    """The batch job this worker runs in (Slurm, PBS), recorded with every update."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or None


def train_client(task: TrainTask) -> ClientUpdate:
    """One client's round: its client code trains from the global params (and from the client's
    state, at the version the task names); the update and the new state's digest go back."""
    with contained(task, "training"):
        return _train_client(task)


def _train_client(task: TrainTask) -> ClientUpdate:
    started = time.time()
    t0 = time.perf_counter()
    faults.before_training(task)
    s, kept = entered(task)
    client = s.client
    check_base(client, task.code.get("base"))
    cold = bool(getattr(client, "cold", False))
    start = codec.up_from_down(global_params(task.params))  # float32 again if it came down in fp16
    mine = sitestate.with_personal(start, kept)
    work = _work(task, mine, kept)
    if missing := work.needs() - set(getattr(client, "supports", ())):
        raise RuntimeError(f"client {task.code['path']} does not support {sorted(missing)}, which this round needs")
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    if task.keep is not None:
        s.version = sitestate.DIRTY  # until its new state is written: a failure half way is no version
    fit = checked_fit(call_client(client.train, mine, work), mine, work)
    faults.after_training(task, time.perf_counter() - t1)
    t_train = time.perf_counter() - t1
    finite(task, fit.params)  # personal layers included: a diverged one must not be kept either
    params = sitestate.split_personal(fit.params, start, (task.keep or {}).get("personal") or [], kept)
    faults.tamper(task, start, params)
    finite(task, params)
    if ditto := (task.keep or {}).get("ditto"):
        _ditto(task, ditto, client, kept, mine)
    t2 = time.perf_counter()
    steps = int(cast(int, fit.steps))  # checked_fit set it where the client left it None
    extras = work.finish(steps)
    n = int(fit.num_examples)
    params, used, wire = outgoing(task, params, start, n, kept)
    if task.keep is not None:  # after the codec: top-k's residual is part of the state
        extras["state"] = sitestate.leave(s, task.keep, call_client, started)
    params, ref = send_back(task, params, extras)
    return ClientUpdate(
        codec=used, wire_nbytes=wire,
        client=task.client, site=task.site, round=task.round, num_examples=n, params=params, ref=ref,
        metrics=dict(fit.metrics),
        timings={"queue": max(0.0, started - task.submitted_at), "load": t_load, "train": t_train,
                 "upload": time.perf_counter() - t2, "total": time.perf_counter() - t0,
                 "samples_per_s": work.examples_seen(steps, n) / max(t_train, 1e-9)},
        extras={"steps": steps, "worker": f"{socket.gethostname()}:{os.getpid()}", "cold": cold,
                "batch_job": batch_job(), **extras},
    )


def finite(task: TrainTask, params: dict[str, np.ndarray]) -> None:
    """A diverged model (a NaN or inf anywhere) is this client's failure, never an update or a state.
    (Integer arrays are always finite; only floating and complex ones are looked at.)"""
    if not all(np.isfinite(a).all() for a in params.values() if np.asarray(a).dtype.kind in "fc"):
        raise FloatingPointError(f"client {task.client}: training diverged (non-finite weights); lower train.lr")


def _ditto(task: TrainTask, d: dict[str, Any], client: Any, kept: sitestate.Kept, mine: dict[str, np.ndarray]) -> None:
    """Ditto's personal model (`d`: the job's personal.ditto): trained by the client's own loop from
    where it was (the global model on the client's first round), with FedProx's term pulling it
    toward this round's global model; kept at the site, never sent."""
    if "prox" not in set(getattr(client, "supports", ())):
        raise RuntimeError(f"client {task.code['path']} does not support 'prox', which personal.ditto needs")
    settings: TrainSettings = {**task.train, "prox_mu": float(d["lam"]), "epochs": int(d["epochs"]), "steps": None,
                "scaffold": None, "personal": True}
    seed = np.random.SeedSequence([task.seed, task.round, task.client, *task.draw, 0xD1770])
    work = Work(round=task.round, seed=int(seed.generate_state(1)[0]), settings=settings, global_params=mine,
                horizon=task.horizon)
    start = OrderedDict((n, kept.ditto.get(n, a)) for n, a in mine.items())
    # (no work.finish: a client may honour prox_mu in its own loop, and `supports` says it does)
    fit = checked_fit(call_client(client.train, start, work), mine, work)
    finite(task, fit.params)
    kept.ditto = OrderedDict((n, np.array(a, copy=True)) for n, a in fit.params.items())


def evaluate_client(task: TrainTask) -> ClientEvaluation:
    """One client's federated evaluation: its client code evaluates the global params on its own
    held-out data; only the example count and the metrics go back. A personalized run also
    evaluates the client's own model (its personal layers in the global model, or Ditto's
    personal model) and reports it as ``personal_<metric>``, so the row shows what
    personalization buys beside the global model."""
    with contained(task, "evaluation"):
        return _evaluate_client(task)


def _evaluate_client(task: TrainTask) -> ClientEvaluation:
    t0 = time.perf_counter()
    s, kept = entered(task)
    check_base(s.client, task.code.get("base"))
    if task.keep is not None and sitestate.stateful(s.client):
        s.version = sitestate.DIRTY  # evaluate() may touch what get_state() returns: reload before training
    start = codec.up_from_down(global_params(task.params))
    if hasattr(s.client, "evaluation_round"):  # a Flower app's evaluate config names the round
        s.client.evaluation_round = task.round
    n, metrics = _evaluated(s.client, start)
    keep = task.keep or {}
    if keep.get("personal") or keep.get("ditto"):
        if clash := [k for k in metrics if k.startswith("personal_")]:
            raise ValueError(f"client evaluate() returned metric {clash[0]!r}: under personalization personal_* "
                             "names are the personalized model's; rename it")
        own = sitestate.with_personal(start, kept)
        if kept.ditto:
            own = OrderedDict((k, kept.ditto.get(k, a)) for k, a in start.items())
        metrics.update({f"personal_{k}": v for k, v in _evaluated(s.client, own)[1].items()})
    return ClientEvaluation(client=task.client, site=task.site, round=task.round, num_examples=n,
                            metrics=metrics, seconds=time.perf_counter() - t0)


def _evaluated(client: Any, params: dict[str, np.ndarray]) -> tuple[int, dict[str, float]]:
    ev = call_client(client.evaluate, params)
    if not isinstance(ev, Evaluation):
        raise TypeError(f"client evaluate() returned {type(ev).__name__}, expected fedgrid.client.Evaluation")
    if isinstance(ev.num_examples, bool) or not isinstance(ev.num_examples, int | np.integer) or ev.num_examples <= 0:
        raise ValueError(f"client evaluate() returned num_examples {ev.num_examples!r}, expected an int > 0")
    return int(ev.num_examples), dict(ev.metrics)
