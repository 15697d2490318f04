"""fedgrid's own client: the built-in datasets and models trained by minibatch SGD on
cross-entropy. It is one implementation of the client API (:mod:`fedgrid.apps.client`), the one a
job gets when it names no ``client:``; nothing about it is special to the round machinery.

Its options are the model the driver chose (``model``: name, input shape, classes, kwargs). Data
comes from the job's data block (digits, fashion_mnist, parquet, synthetic) through
:mod:`fedgrid.apps.datasets`, cached per worker process; one model object per architecture and
thread is kept per worker and its weights overwritten every round.

It computes on ``ctx.device`` (apps/devices.py): the model lives there, each batch is moved
there, and the rows stay in host memory (a worker keeps many clients' rows; a batch is small).
Params go back as CPU numpy arrays as always. On the CPU every operation, and so every result,
is what it was before devices existed: moving a CPU tensor to the CPU is the tensor itself, and
the running loss is summed in float64 as the Python float it was.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from fedgrid.apps.client import Client, Evaluation, Fit, Params, Work
from fedgrid.apps.datasets import client_arrays
from fedgrid.apps.devices import model_device, on

PATH = "fedgrid.apps.builtin:BuiltinClient"

_MODELS: dict[tuple, Any] = {}


def set_threads(threads: int):  # noqa: ANN201 - the torch module
    """torch, with the worker's thread count set (apps/train.apply_threads, the one place that does)."""
    import torch

    from fedgrid.apps.train import apply_threads

    apply_threads(threads)
    return torch


def model_key(spec: dict[str, Any], device: str = "cpu") -> tuple:
    # per thread too: a `local` site runs several clients at once in one process, and two of them
    # training the same module object would corrupt each other's autograd state
    return (threading.get_ident(), spec["name"], tuple(spec["input_shape"]), spec["num_classes"],
            repr(sorted(spec["kwargs"].items())), device)


def cached_model(spec: dict[str, Any], device: str = "cpu"):  # noqa: ANN201 - a torch module
    """One model object per architecture per worker, on `device`; weights are loaded into it every
    round. Built on the CPU first, so its initial weights are the seeded ones wherever it lives."""
    from fedgrid.apps.models import build

    key = model_key(spec, device)
    if key not in _MODELS:
        model = build(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], spec["kwargs"])
        _MODELS[key] = model if device == "cpu" else model.to(device)
    return _MODELS[key]


class BuiltinClient(Client):
    supports = frozenset({"prox", "scaffold", "steps", "head"})

    @property
    def spec(self) -> dict[str, Any]:
        return self.ctx.options["model"]

    @property
    def cold(self) -> bool:
        """The model of this architecture is not built in this worker (thread) yet."""
        return model_key(self.spec, self.ctx.device) not in _MODELS

    def model(self):  # noqa: ANN201 - a torch module
        """This worker's (thread's) model object of the job's architecture, on ``ctx.device``."""
        return cached_model(self.spec, self.ctx.device)

    def tensors(self, threads: int = 1, part: str = "train"):  # noqa: ANN201 - (x, y) torch tensors
        """This client's rows as tensors: the ones it trains on, or (``part="holdout"``) the
        ``data.holdout`` share it keeps out of training for federated evaluation."""
        torch = set_threads(threads)
        c = self.ctx
        # on the object, not in a module cache: a worker keeps at most train.keep_clients client
        # objects, so the rows of a client it dropped are freed with it
        if "_tensors" not in self.__dict__:
            arr = client_arrays(c.data, c.client, c.clients, c.seed)
            x = arr.x if arr.x.flags.writeable and arr.x.flags.c_contiguous else np.array(arr.x, order="C")
            y = arr.y if arr.y.flags.writeable else arr.y.copy()
            held = holdout_rows(len(y), float(c.data.get("holdout") or 0.0), c.seed, c.client)
            keep = np.setdiff1d(np.arange(len(y)), held)
            self._tensors = {"train": (torch.from_numpy(np.ascontiguousarray(x[keep])), torch.from_numpy(y[keep])),
                             "holdout": (torch.from_numpy(np.ascontiguousarray(x[held])), torch.from_numpy(y[held]))}
        return self._tensors[part]

    def init_params(self) -> Params:
        import torch

        from fedgrid.apps.models import get_params

        torch.manual_seed(self.ctx.seed)
        return get_params(self.model())

    def warm(self) -> None:
        """Data and model loaded, and one optimiser step taken on a batch (see `prime`)."""
        opts = self.ctx.options
        x, y = self.tensors(int(opts.get("threads", 1)))
        prime(self.model(), x, y, int(opts.get("batch_size", 32)))

    def evaluate(self, params: Params) -> Evaluation:
        """Loss and accuracy of `params` on the rows this client held out (``data.holdout``)."""
        from fedgrid.apps.datasets import Arrays
        from fedgrid.apps.evaluate import evaluate

        x, y = self.tensors(part="holdout")
        m = evaluate(self.model(), params, Arrays(x.numpy(), y.numpy(), self.spec["num_classes"]))
        return Evaluation(len(y), m)

    def train(self, params: Params, work: Work) -> Fit:
        from fedgrid.apps.models import get_params, set_params

        x, y = self.tensors(int(work.settings.get("threads", 1)))
        if work.budget(work.batches_per_epoch(len(y))) == 0 and not work.needs() & {"prox", "scaffold", "head"}:
            # no step to take (train.epochs: 0, a dry run of the round machinery): the model goes
            # back as it came, without a model, an optimiser or a copy made for nothing
            return Fit(OrderedDict(params), len(y), _Pass().metrics(), steps=0)
        model = self.model()
        set_params(model, params)
        if work.settings.get("head_epochs"):
            done = rep_sgd(work, model, x, y)
        else:
            fix = work.corrections(model)  # FedProx / SCAFFOLD, when the strategy asks for them
            done = local_sgd(work, model, x, y, fix)
        return Fit(get_params(model), len(y), done.metrics(), steps=done.steps)


def holdout_rows(n: int, share: float, seed: int, client: int) -> np.ndarray:
    """The sorted indices of the `share` of a client's n rows kept out of training (seeded per
    client, so every worker and every resume holds out the same rows); none when share is 0."""
    k = int(round(n * share))
    if k == 0:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng([seed, client, 0x401D]).permutation(n)[:min(k, n - 1)])


def prime(model: Any, x: Any, y: Any, batch_size: int) -> None:
    """One optimiser step on a batch, as round 1 will take them. A fresh process pays ~1.5 s the
    first time it builds a torch optimiser (it imports torch._dynamo) and more on its first
    forward and backward pass; round 1 should not. The step changes the cached model's weights,
    which is harmless: every task loads the global params into it first."""
    import torch

    if len(y) == 0:
        return
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xb, yb = on(model_device(model), x[:batch_size], y[:batch_size])
    torch.nn.functional.cross_entropy(model(xb), yb).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


class _Pass:
    """What local training did: steps taken and the running loss and accuracy over its batches."""

    def __init__(self) -> None:
        self.steps, self.seen, self.loss, self.correct = 0, 0, 0.0, 0

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss / max(self.seen, 1), "accuracy": self.correct / max(self.seen, 1)}


def rep_sgd(work: Work, model: Any, x: Any, y: Any) -> _Pass:
    """FedRep's round (Collins et al., ICML 2021): the personal layers (the head) trained alone for
    ``head_epochs`` epochs with the shared ones frozen, then the shared ones alone for the round's
    epochs with the head frozen; the strategy's corrections apply to the shared part. Returns the
    shared part's pass: its steps are what the round's update took."""
    from dataclasses import replace

    head = set(work.settings["personal_layers"])
    params = dict(model.named_parameters())
    try:
        for n, p in params.items():
            p.requires_grad_(n in head)
        head_work = replace(work, settings={**work.settings, "epochs": work.settings["head_epochs"], "steps": None},
                            _fix=None)
        local_sgd(head_work, model, x, y, _NoFix())
        for n, p in params.items():
            p.requires_grad_(n not in head)
        return local_sgd(work, model, x, y, work.corrections(model))
    finally:
        for p in params.values():
            p.requires_grad_(True)


class _NoFix:
    active = False


def local_sgd(work: Work, model: Any, x: Any, y: Any, fix: Any) -> _Pass:
    """Minibatch SGD on cross-entropy for the round's budget: a paced step count when the driver
    sized this client's work to the deadline, the job's epochs otherwise."""
    import torch

    tr = work.settings
    gen = torch.Generator().manual_seed(work.seed)
    opt = torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr["momentum"], weight_decay=tr["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    n, bs = len(y), tr["batch_size"]
    done = _Pass()
    if n == 0:
        return done
    device = model_device(model)
    # summed where the model is, read once at the end: a GPU is not made to wait every step
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    budget = work.budget(work.batches_per_epoch(n))
    while done.steps < budget:
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, bs):
            if done.steps >= budget:
                break
            idx = order[s:s + bs]
            xb, yb = on(device, x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            if fix.active:
                fix.apply()
            opt.step()
            loss_sum += loss.detach().double() * len(idx)
            correct += (out.argmax(1) == yb).sum()
            done.seen += len(idx)
            done.steps += 1
    done.loss, done.correct = float(loss_sum), int(correct)
    return done
