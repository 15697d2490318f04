"""The train app body: runs at a client's site, inside a persistent Parsl worker.

A worker process lives across rounds (HTEX), so everything expensive is paid once per process and
kept in module state: ``import torch``, the site's data pool and its split
(:mod:`fedgrid.apps.datasets`), each client's tensors, and one model object per architecture whose
weights are overwritten every round. A round then costs only the training itself.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedgrid.apps import codec, faults
from fedgrid.apps.corrections import Corrections
from fedgrid.apps.datasets import client_arrays
from fedgrid.apps.store import Ref, Store, fetch
from fedgrid.apps.task import TrainTask
from fedgrid.apps.update import ClientUpdate

_MODELS: dict[tuple, Any] = {}
_TENSORS: dict[tuple, Any] = {}
_THREADS: list[int] = []
_GLOBAL: dict[str, Any] = {}  # sha256 -> params: the round's global model, fetched once per worker
_GLOBAL_LOCK = threading.Lock()


def global_params(params: Any) -> dict[str, np.ndarray]:
    """The task's global params: inline, or fetched (and verified) from the store once per worker."""
    if not isinstance(params, Ref):
        return params
    with _GLOBAL_LOCK:  # clients sharing a worker process (threads) fetch the round's model once
        if params.sha256 not in _GLOBAL:
            _GLOBAL.clear()
            _GLOBAL[params.sha256] = fetch(params)
        return _GLOBAL[params.sha256]


def send_back(task: TrainTask, params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Ref | None]:
    """Inline when small; through the store when over the site's limit (e.g. Globus Compute's 10 MB)."""
    above = task.ref_above
    nbytes = sum(a.nbytes for a in params.values())
    if above is None or nbytes <= above or not task.store:
        return params, None
    return {}, Store(task.store).put(params, task.update_key)


def _torch(threads: int):
    import torch

    if not _THREADS or _THREADS[0] != threads:
        torch.set_num_threads(threads)
        _THREADS[:] = [threads]
    return torch


def _model_key(spec: dict[str, Any]) -> tuple:
    # per thread too: a `local` site runs several clients at once in one process, and two of them
    # training the same module object would corrupt each other's autograd state
    return (threading.get_ident(), spec["name"], tuple(spec["input_shape"]), spec["num_classes"],
            repr(sorted(spec["kwargs"].items())))


def cached_model(spec: dict[str, Any]):
    """One model object per architecture per worker; weights are loaded into it every round."""
    from fedgrid.apps.models import build

    key = _model_key(spec)
    if key not in _MODELS:
        _MODELS[key] = build(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], spec["kwargs"])
    return _MODELS[key]


def _client_tensors(task: TrainTask):
    torch = _torch(task.train["threads"])
    key = (task.client, repr(sorted(task.data.items())), task.clients, task.seed)
    if key not in _TENSORS:
        arr = client_arrays(task.data, task.client, task.clients, task.seed)
        x = arr.x if arr.x.flags.writeable and arr.x.flags.c_contiguous else np.array(arr.x, order="C")
        y = arr.y if arr.y.flags.writeable else arr.y.copy()
        _TENSORS[key] = (torch.from_numpy(x), torch.from_numpy(y))
    return _TENSORS[key]


def warm(task: TrainTask) -> dict[str, Any]:
    """Pay a worker's one-time costs (torch import, data pool, split, model) before round 1 needs them.

    Returns what it cached, so the driver can tell a warm-up that loaded the model from one that
    could not (a task built before the driver knew the model's shapes)."""
    t0 = time.perf_counter()
    x, y = _client_tensors(task)
    if task.model:
        _prime(cached_model(task.model), x, y, task.train)
    return {"pid": os.getpid(), "seconds": time.perf_counter() - t0, "model": task.model.get("name")}


def _prime(model: Any, x: Any, y: Any, train: dict[str, Any]) -> None:
    """One optimiser step on a batch, as round 1 will take them. A fresh process pays ~1.5 s the
    first time it builds a torch optimiser (it imports torch._dynamo) and more on its first
    forward and backward pass; round 1 should not. The step changes the cached model's weights,
    which is harmless: every task loads the global params into it first."""
    import torch

    if len(y) == 0:
        return
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=train["lr"], momentum=train["momentum"],
                          weight_decay=train["weight_decay"])
    bs = train["batch_size"]
    torch.nn.functional.cross_entropy(model(x[:bs]), y[:bs]).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def compress(task: TrainTask, comp: dict[str, Any], params: dict[str, np.ndarray],
             start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The update as it goes over the wire (apps/codec.py). Top-k's error-feedback residual is
    this client's own state at its site: read from the store, added in, and written back."""
    key = comp.get("residual_key")
    store = Store(task.store) if key and task.store else None
    residual = (store.get(key) or {}) if store is not None else None
    seed = int(np.random.SeedSequence([task.seed, task.round, task.client, 7]).generate_state(1)[0])
    payload, left = codec.encode(params, start, comp["codec"], comp.get("topk_fraction", 0.01), residual, seed,
                                 comp.get("dense_below", 0))
    if store is not None:
        store.put(left, key)
    return payload


@dataclass
class _Pass:
    """What local training did: steps taken and the running loss and accuracy over its batches."""

    steps: int = 0
    seen: int = 0
    loss: float = 0.0
    correct: int = 0

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss / max(self.seen, 1), "accuracy": self.correct / max(self.seen, 1)}


def local_sgd(task: TrainTask, model: Any, x: Any, y: Any, fix: Corrections) -> _Pass:
    """Minibatch SGD on cross-entropy for the task's budget: a paced step count when the driver
    sized this client's work to the deadline, the job's epochs otherwise."""
    torch = _torch(task.train["threads"])
    tr = task.train
    # an asynchronous client may train twice from the same global model: `draw` tells the two apart
    seed = np.random.SeedSequence([task.seed, task.round, task.client, *task.draw])
    gen = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
    opt = torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr["momentum"], weight_decay=tr["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    n, bs = len(y), tr["batch_size"]
    done = _Pass()
    budget = tr.get("steps") or tr["epochs"] * -(-n // bs)
    while done.steps < budget:
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, bs):
            if done.steps >= budget:
                break
            idx = order[s:s + bs]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            if fix.active:
                fix.apply()
            opt.step()
            done.loss += loss.item() * len(idx)
            done.correct += int((out.argmax(1) == yb).sum())
            done.seen += len(idx)
            done.steps += 1
    return done


def outgoing(task: TrainTask, params: dict[str, np.ndarray], start: dict[str, np.ndarray],
             n: int) -> tuple[dict[str, np.ndarray], str, int]:
    """The update as it leaves the site: local DP's clipping and noise, then secure aggregation's
    mask or the compression codec. Returns the payload, its codec and its wire bytes (0: raw)."""
    if dp := task.dp:  # local DP: the update is clipped and noised before it leaves the site
        from fedgrid.apps.privacy import clip_and_noise

        rng = np.random.default_rng(np.random.SeedSequence([task.seed, task.round, task.client, 0xD9]))
        params, _ = clip_and_noise(params, start, dp["clip"], dp["std"], rng)
    if sec := task.train.get("secagg"):  # secure aggregation: only the masked vector leaves the site
        from fedgrid.apps.secagg import mask

        return {"masked": mask(sec, task.client, task.round, params, start, n)}, "secagg", 0
    if comp := task.compress:
        payload = compress(task, comp, params, start)
        return payload, comp["codec"], codec.nbytes(payload)
    return params, "none", 0


def train_client(task: TrainTask) -> ClientUpdate:
    """Local SGD from the global params on this client's shard; returns the new params."""
    started = time.time()
    t0 = time.perf_counter()
    _torch(task.train["threads"])
    from fedgrid.apps.models import get_params, set_params

    faults.before_training(task)
    x, y = _client_tensors(task)
    cold = _model_key(task.model) not in _MODELS
    model = cached_model(task.model)
    start = codec.up_from_down(global_params(task.params))  # float32 again if it came down in fp16
    set_params(model, start)
    fix = Corrections(task.train, model, start)  # FedProx / SCAFFOLD, when the strategy asks for them
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    done = local_sgd(task, model, x, y, fix)
    faults.after_training(task, time.perf_counter() - t1)
    t_train = time.perf_counter() - t1
    params = get_params(model)
    faults.tamper(task, start, params)
    if not all(np.isfinite(a).all() for a in params.values()):
        raise FloatingPointError(f"client {task.client}: training diverged (non-finite weights); "
                                 f"lower train.lr")
    t2 = time.perf_counter()
    extras = fix.finish(done.steps)
    params, used, wire = outgoing(task, params, start, len(y))
    params, ref = send_back(task, params)
    return ClientUpdate(
        codec=used, wire_nbytes=wire,
        client=task.client, site=task.site, round=task.round, num_examples=len(y), params=params, ref=ref,
        metrics=done.metrics(),
        timings={"queue": max(0.0, started - task.submitted_at), "load": t_load, "train": t_train,
                 "upload": time.perf_counter() - t2, "total": time.perf_counter() - t0,
                 "samples_per_s": done.seen / max(t_train, 1e-9)},
        extras={"steps": done.steps, "worker": f"{socket.gethostname()}:{os.getpid()}", "cold": cold, **extras},
    )
