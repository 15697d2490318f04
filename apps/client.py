"""The client API: the code that runs at a site, written by the user (``fedgrid.client``).

A job names a class (``client: mypkg.fl:Client``) that the site can import. fedgrid makes one
object of it per client per worker process and keeps it across rounds, so whatever it loads or
builds once (its data, its model) is paid once. Everything around the user's code stays fedgrid's:
deltas, compression, DP, secure masking, the store, validation, timings, pacing and retries.

    from fedgrid.client import Client, Evaluation, Fit

    class MyClient(Client):
        supports = {"prox", "steps"}           # strategy hooks this loop honours (see Work)

        def init_params(self):                 # the initial global model, on the driver: no data here
            return params_of(build_model(self.ctx.options))

        def train(self, params, work):         # from the global params, for work.budget(...) steps
            ...
            return Fit(new_params, num_examples, {"loss": ..., "mae": ...}, steps=taken)

        def evaluate(self, params):            # on this client's held-out data
            return Evaluation(num_examples, {"loss": ..., "rmse": ...})

Params cross as an ordered dict of numpy arrays (``state_dict`` order), so the API is not tied to
torch: :func:`torch_params` and :func:`load_torch_params` convert for torch models.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedgrid.apps.records import Extras, TrainSettings

# ordered as the model's state_dict (a plain dict keeps its order; torch_params gives an OrderedDict)
Params = dict[str, np.ndarray]

# What a strategy or the round may ask of local training, and what a client says it honours:
HOOKS = {
    "prox": "FedProx's proximal term (work.corrections(model).apply() after each backward pass)",
    "scaffold": "SCAFFOLD's control-variate correction (work.corrections(model).apply() after each backward pass)",
    "steps": "a step budget set by the round's pacing (train for work.budget(batches_per_epoch) steps)",
    "head": "FedRep's head-first round (personal.head_epochs: train work.settings['personal_layers'] alone for "
            "work.settings['head_epochs'] epochs, then the rest alone for the round's epochs)",
}


@dataclass(frozen=True)
class Context:
    """Who this client is, what the job says about its data and options, and where to compute.

    `device` is the torch device this client's worker trains on, decided at the site
    (apps/devices.py): ``"cuda:0"`` when the site pins the worker to a GPU (its executor's
    ``gpus``, or ``gpus_per_node`` on a batch or cloud site), or the worker otherwise sees one,
    and torch sees it there; ``"cpu"`` otherwise, and always under ``train.device: cpu``. Inside
    the worker its pinned GPU is device 0 (a worker given several sees them as 0, 1, ...). A
    client moves its model and each batch there and returns params as CPU numpy arrays
    (:func:`torch_params` does). On the driver (``init_params``) it is ``"cpu"``.
    """

    client: int  # this client's id, 0 .. clients-1 across all sites
    clients: int  # clients in the whole job
    site: str
    seed: int  # the job's seed
    data: dict[str, Any]  # the job's data block as this client's site sees it (paths, partition, ...)
    options: dict[str, Any]  # the job's client.options
    device: str = "cpu"  # "cuda:0" or "cpu": where this client computes (see above)

    def split(self, labels: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """This client's rows of a dataset pooled at the site, by the job's ``data.partition``
        (iid, dirichlet, shards, natural): the same split on every site, nothing sent around."""
        from fedgrid.apps.partition import partition

        return partition(np.asarray(labels), self.clients, self.data.get("partition") or {}, self.seed,
                         groups)[self.client]


@dataclass
class Fit:
    """What `train` returns: the new params (same names, shapes and dtypes as the global ones),
    how many examples they were trained on (the aggregation weight), any float metrics, and the
    local steps taken (FedNova and SCAFFOLD need it; None means ``work.budget`` of them).

    An example is what a minibatch holds `batch_size` of (a row, an image, a text window, not a
    character): pacing sizes a client's step budget from it and from the speed it learned, as
    ``epochs x ceil(num_examples / batch_size)`` for a full round's work."""

    params: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int | None = None


@dataclass
class Evaluation:
    """What `evaluate` returns: examples evaluated (the weight in the mean) and float metrics."""

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Work:
    """How much to train this round, and the strategy's hooks into the loop.

    `settings` is the job's train block (epochs, batch_size, lr, momentum, weight_decay, ...) with
    the strategy's instructions for this client merged in (a dict: apps/records.py `TrainSettings`
    names its keys). `steps` is set when the round paces
    clients to its deadline: train that many optimiser steps instead of `epochs` epochs.
    """

    round: int  # the round this training is for, 1 .. rounds
    seed: int  # for this client's shuffling this round (differs per round, client and draw)
    settings: TrainSettings
    global_params: Params
    # the job's round target and the round it was set at, each time it changed (a run extended by
    # ``--rounds +N`` at round 10 of 10: ((0, 10), (10, 10 + N))); `rounds` is the current target
    horizon: tuple[tuple[int, int], ...] = ()
    _fix: Any = None
    _kept: Any = None  # what the site keeps for this client (SCAFFOLD's variate lives there)

    @property
    def rounds(self) -> int:
        """The job's target round count as it stands now (raised by ``fedgrid run --rounds +N``)."""
        return int(self.horizon[-1][1]) if self.horizon else self.round

    @property
    def personal(self) -> bool:
        """This call trains the client's Ditto personal model (not the model it sends): a client
        that keeps optimizer state may keep a second one for it."""
        return bool(self.settings.get("personal"))

    def schedule(self, start: float, end: float = 0.0, shape: str = "cosine") -> float:
        """A value annealed over the job's rounds (a learning rate, a temperature): `start` at
        round 1, toward `end` at the last round, ``cosine`` or ``linear``. When the target changes
        (``--rounds +N``) the schedule continues from the value it had reached and anneals over
        the new rounds, instead of jumping; it is a function of the round and the run's recorded
        targets only, so every worker and every resume gives the same value."""
        return anneal(self.round, self.horizon or ((0, max(self.round, 1)),), start, end, shape)

    @property
    def epochs(self) -> int:
        return int(self.settings.get("epochs", 1))

    @property
    def steps(self) -> int | None:
        return self.settings.get("steps")

    def budget(self, batches_per_epoch: int) -> int:
        """Optimiser steps to take: the paced budget, or epochs x batches per epoch (0 epochs: a
        dry run of the round machinery)."""
        return int(self.steps or self.epochs * batches_per_epoch)

    def batches_per_epoch(self, num_examples: int) -> int:
        return math.ceil(num_examples / int(self.settings.get("batch_size", 32)))

    def examples_seen(self, steps: int, num_examples: int) -> int:
        """Examples that `steps` minibatch steps go through over epochs of `num_examples` (the
        last batch of an epoch is the remainder): the training speed pacing learns from."""
        bpe, bs = self.batches_per_epoch(num_examples), int(self.settings.get("batch_size", 32))
        if bpe == 0:
            return 0
        return (steps // bpe) * num_examples + min((steps % bpe) * bs, num_examples)

    def corrections(self, model: Any) -> Any:
        """FedProx's and SCAFFOLD's per-step correction for a torch model: call ``.apply()`` after
        each ``loss.backward()``, before ``optimizer.step()``. A no-op object when the strategy
        asks for neither. Call it after loading the global params into `model`."""
        from fedgrid.apps.corrections import Corrections

        self._fix = Corrections(self.settings, model, self.global_params, self._kept)
        return self._fix

    def finish(self, steps: int) -> Extras:
        """fedgrid's side, after train: SCAFFOLD keeps the client's new variate in its state and
        returns its change for the server. A round whose strategy corrects local training, from a
        client that never asked for the correction, is an error rather than a silent FedAvg."""
        if self._fix is None:
            if used := sorted(self.needs() & {"prox", "scaffold"}):
                raise RuntimeError(f"the strategy needs {used} in local training, but the client's train() never "
                                   "called work.corrections(model) (and .apply() after each backward pass)")
            return {}
        return self._fix.finish(steps)

    def needs(self) -> set[str]:
        """The hooks this round's strategy uses (of HOOKS)."""
        need = set()
        if self.settings.get("prox_mu"):
            need.add("prox")
        if self.settings.get("scaffold"):
            need.add("scaffold")
        if self.steps:
            need.add("steps")
        if self.settings.get("head_epochs"):
            need.add("head")
        return need


def anneal(rnd: int, horizon: tuple[tuple[int, int], ...] | list, start: float, end: float, shape: str) -> float:
    """Work.schedule's value at round `rnd` over the phases of `horizon` ((from, target), ...):
    each phase anneals from the value its predecessor gave the last round it ran."""
    if shape not in ("cosine", "linear"):
        raise ValueError(f"schedule shape {shape!r}: expected cosine or linear")
    value = float(start)
    for i, (since, target) in enumerate(horizon):
        nxt = horizon[i + 1][0] if i + 1 < len(horizon) else None
        at = rnd if nxt is None or rnd <= nxt else nxt  # this phase's value at rnd, or at its last round
        p = min(max((at - 1 - since) / max(target - since, 1), 0.0), 1.0)
        f = (1 + math.cos(math.pi * p)) / 2 if shape == "cosine" else 1 - p
        reached = end + (value - end) * f
        if nxt is None or rnd <= nxt:
            return reached
        value = reached
    return value


class Client:
    """Subclass this (or write a class with the same methods). `supports` names the HOOKS the
    training loop honours; a job whose strategy needs another is refused at ``fedgrid check``.

    ``self.ctx.device`` is where to train: build the model there (``model.to(self.ctx.device)``),
    move each batch there, and hand back params as CPU numpy arrays (:func:`torch_params`). It is
    the worker's GPU when its site has GPUs (see :class:`Context`), so the same client runs on a
    laptop's CPU and on a GPU node unchanged.

    A client that keeps state between rounds (optimizer moments, a scheduler, an RNG, counters)
    defines two more methods, and fedgrid makes that state exact across rounds, workers and
    resumes (see apps/sitestate.py)::

        def get_state(self):                   # after train: arrays, numbers, strings, and dicts/lists of them
            return {"opt": self.opt.state_dict(), "rng": self.rng.bit_generator.state}

        def set_state(self, state):            # before train, when this object holds another version
            self.opt.load_state_dict(state["opt"])
            self.rng.bit_generator.state = state["rng"]

    Whatever influences training and is not in the params or in get_state() is not kept exactly:
    the object that runs a client may be another worker's, or new.
    """

    supports: ClassVar[frozenset[str] | set[str]] = frozenset()

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def init_params(self) -> Params:
        """The initial global model. Called once, on the driver, where the client's data is not."""
        raise NotImplementedError

    def train(self, params: Params, work: Work) -> Fit:
        raise NotImplementedError

    def evaluate(self, params: Params) -> Evaluation:
        """This client's metrics of the global `params` on its held-out data (federated evaluation)."""
        raise NotImplementedError

    def warm(self) -> None:
        """Optional: load what the first round would (data, model), before round 1 needs it."""

    def base(self) -> Base | None:
        """Optional: the frozen base this client fine-tunes (its params are then only the
        trainable part). Checked at every site against the driver's copy before training."""
        return None


REQUIRED = ("init_params", "train")


@dataclass(frozen=True)
class Base:
    """The frozen weights a client fine-tunes (a pre-trained model the site holds): a name and the
    path of this site's copy (a file, or a directory such as ``save_pretrained``'s). fedgrid
    records the driver's copy's sha256 with the run and checks every site's copy against it
    before it trains, so all sites fine-tune the same base; only the trainable part travels."""

    name: str
    path: str

    def sha256(self) -> str:
        return digest(self.path)


_DIGESTS: dict[tuple[str, tuple], str] = {}


def digest(path: str) -> str:
    """sha256 over a file, or over a directory's files (relative names and contents, sorted).
    Cached per process by each file's size and mtime: a worker hashes a multi-GB base once."""
    import hashlib
    from pathlib import Path

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"base weights not found at {path}")
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    key = (str(root.resolve()), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(root) if root.is_dir() else p.name).encode() + b"\0")
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def trainable_params(model: Any) -> Params:
    """A torch module's parameters that train (``requires_grad``), as numpy copies in module order:
    what a fine-tuning client sends. Frozen parameters never leave the site."""
    return OrderedDict((n, p.detach().cpu().numpy().copy()) for n, p in model.named_parameters() if p.requires_grad)


def load_trainable(model: Any, params: dict[str, np.ndarray]) -> None:
    """Load `params` (the names :func:`trainable_params` gives) into `model`; the frozen ones stay."""
    import torch

    mine = dict(model.named_parameters())
    if missing := [k for k in params if k not in mine]:
        raise KeyError(f"the model has no parameter(s) {missing[:3]}")
    with torch.no_grad():
        for k, v in params.items():
            mine[k].copy_(torch.from_numpy(np.asarray(v)))


def torch_params(model: Any) -> Params:
    """A torch module's state_dict as numpy arrays, in state_dict order (copies)."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def load_torch_params(model: Any, params: dict[str, np.ndarray]) -> None:
    """Load numpy params into a torch module (names must match its state_dict, in order)."""
    from fedgrid.apps.models import set_params

    set_params(model, params)
