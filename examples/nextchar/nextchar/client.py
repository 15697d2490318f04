"""Next-character prediction at the sites: a small character LSTM, one client per fortune file.

Job file (``examples/nextchar/job.yaml``)::

    client: {path: nextchar.client:NextCharClient, options: {seq_len: 40, chars_per_epoch: 4000}}
    data: {dataset: custom, clients: 43, partition: {kind: none}}

Options (all optional): ``root`` (the fortunes folder), ``seq_len`` (characters per training
sequence), ``chars_per_epoch`` (the cap on characters a client trains on per epoch, so a 245 KB
file costs what a 4 KB one does), ``holdout`` (share of each file's tail kept for evaluation),
``eval_chars`` (the cap on held-out characters evaluated), ``embed`` and ``hidden`` (model
sizes), ``clip`` (gradient-norm clipping) and ``optimizer`` (``sgd`` or ``adam``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from fedgrid.client import Client, Evaluation, Fit, load_torch_params, torch_params

from . import data

DEFAULTS: dict[str, Any] = {"root": data.ROOT, "seq_len": 40, "chars_per_epoch": 4000, "holdout": 0.1,
                            "eval_chars": 2000, "embed": 16, "hidden": 64, "clip": 1.0, "optimizer": "sgd"}


class CharLSTM(nn.Module):
    """Embedding -> one LSTM layer -> a linear read-out over the vocabulary, at every position."""

    def __init__(self, embed: int = 16, hidden: int = 64, vocab: int = data.VOCAB):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (batch, time) -> (batch, time, vocab)
        h, _ = self.lstm(self.embed(ids))
        return self.out(h)


def options(opts: dict[str, Any]) -> dict[str, Any]:
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown nextchar option(s) {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    return {**DEFAULTS, **opts}


def build_model(opts: dict[str, Any], seed: int) -> CharLSTM:
    torch.manual_seed(seed)
    return CharLSTM(int(opts["embed"]), int(opts["hidden"]))


def windows(ids: np.ndarray, seq_len: int, chars: int, rng: np.random.Generator) -> torch.Tensor:
    """One epoch's training sequences: ceil(chars / seq_len) random windows of seq_len + 1
    characters (inputs and their next characters), `chars` capped at the text's length."""
    seq_len = min(seq_len, len(ids) - 1)
    count = math.ceil(min(chars, len(ids) - 1) / seq_len)
    starts = rng.integers(0, len(ids) - seq_len, size=count)
    return torch.from_numpy(np.stack([ids[s:s + seq_len + 1] for s in starts]))


def sequences_per_epoch(n_chars: int, opts: dict[str, Any]) -> int:
    seq_len = min(int(opts["seq_len"]), n_chars - 1)
    return math.ceil(min(int(opts["chars_per_epoch"]), n_chars - 1) / seq_len)


def make_optimizer(model: nn.Module, settings: dict[str, Any], opts: dict[str, Any]) -> torch.optim.Optimizer:
    if opts["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0))
    return torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings.get("momentum", 0.0),
                           weight_decay=settings.get("weight_decay", 0.0))


class Tally:
    """Loss and accuracy summed over predicted characters."""

    def __init__(self) -> None:
        self.chars, self.loss, self.correct = 0, 0.0, 0

    def add(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        n = target.numel()
        self.chars += n
        self.loss += float(loss) * n
        self.correct += int((logits.argmax(-1) == target).sum())

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss / max(self.chars, 1), "accuracy": self.correct / max(self.chars, 1)}


def step(model: nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor, clip: float, tally: Tally,
         fix: Any = None) -> None:
    """One optimiser step on a batch of windows: predict every next character."""
    x, y = batch[:, :-1], batch[:, 1:]
    opt.zero_grad(set_to_none=True)
    logits = model(x)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    if fix is not None:
        fix.apply()  # FedProx's proximal pull (or SCAFFOLD's correction) after backward
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    tally.add(logits.detach(), y, loss.detach())


@torch.no_grad()
def score(model: nn.Module, ids: np.ndarray, chunk: int = 200) -> Tally:
    """Next-character loss and accuracy over `ids`, read in chunks of `chunk` characters (the
    LSTM's state starts fresh in each)."""
    model.eval()
    tally = Tally()
    t = torch.from_numpy(ids)
    full = (len(t) - 1) // chunk
    pieces = [t[:full * chunk + 1].unfold(0, chunk + 1, chunk)] if full else []
    if len(t) - 1 > full * chunk:
        pieces.append(t[full * chunk:].unsqueeze(0))
    for b in pieces:
        logits = model(b[:, :-1])
        y = b[:, 1:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        tally.add(logits, y, loss)
    model.train()
    return tally


class NextCharClient(Client):
    supports = {"prox", "scaffold", "steps"}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.opts = options(ctx.options)
        torch.set_num_threads(1)  # the sites' workers each get one core

    def _model(self) -> CharLSTM:
        if not hasattr(self, "model"):
            self.model = build_model(self.opts, self.ctx.seed)
        return self.model

    def _text(self) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "train_ids"):
            o = self.opts
            self.train_ids, held = data.client_text(self.ctx.client, self.ctx.clients, o["root"], float(o["holdout"]))
            self.held_ids = held[:int(o["eval_chars"]) + 1]
        return self.train_ids, self.held_ids

    def init_params(self):
        return torch_params(self._model())

    def warm(self) -> None:
        self._text()
        self._model()

    def train(self, params, work) -> Fit:
        ids, _ = self._text()
        model = self._model()
        load_torch_params(model, params)
        fix = work.corrections(model)
        opt = make_optimizer(model, work.settings, self.opts)
        rng = np.random.default_rng(work.seed)
        per_epoch = sequences_per_epoch(len(ids), self.opts)
        bs = int(work.settings["batch_size"])
        budget, steps, tally = work.budget(work.batches_per_epoch(per_epoch)), 0, Tally()
        model.train()
        while steps < budget:
            for batch in windows(ids, int(self.opts["seq_len"]), int(self.opts["chars_per_epoch"]), rng).split(bs):
                if steps >= budget:
                    break
                step(model, opt, batch, float(self.opts["clip"]), tally, fix)
                steps += 1
        # examples are training windows, batch_size of them a step: what pacing sizes budgets by
        return Fit(torch_params(model), per_epoch, tally.metrics(), steps=steps)

    def evaluate(self, params) -> Evaluation:
        _, held = self._text()
        model = self._model()
        load_torch_params(model, params)
        t = score(model, held)
        return Evaluation(t.chars, t.metrics())
