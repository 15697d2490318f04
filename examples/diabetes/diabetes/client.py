"""Regression with its own loss and metrics: disease progression one year on, from ten baseline
measurements (scikit-learn's diabetes data, 442 patients), by a small MLP trained on MSE.

The clients are age bands (under 40, 40s, 50s, 60 and over by default), as if each clinic saw one
age group: a natural non-IID split, computed the same way at every site by ``ctx.split`` with
``data.partition: {kind: natural, column: age_band}`` (``column: sex`` splits by sex instead, for
two clients). Each client holds out a seeded share of
its patients for federated evaluation and reports RMSE (in the target's own units), MAE and R²
(against its own held-out mean) from both ``train`` and ``evaluate``.

    client: {path: diabetes.client:DiabetesClient, options: {hidden: 32, bands: [40, 50, 60]}}
    data: {dataset: custom, clients: 4, partition: {kind: natural, column: age_band}}

The target is scaled by fixed constants (``target_shift``, ``target_scale``, agreed before
training and the same at every client), so no client's statistics leave it.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from fedgrid.client import Client, Evaluation, Fit, load_torch_params, torch_params

DEFAULTS: dict[str, Any] = {"hidden": 32, "bands": [40, 50, 60], "holdout": 0.25,
                            "target_shift": 150.0, "target_scale": 80.0}


GROUPS = ("age_band", "sex")


def load(column: str, bands: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (scikit-learn's standardised ones), the target, and each patient's group: the age
    band (from the age in years of the unscaled copy) or the sex."""
    from sklearn.datasets import load_diabetes

    if column not in GROUPS:
        raise ValueError(f"data.partition.column must be one of {GROUPS}, got {column!r}")
    scaled, raw = load_diabetes(), load_diabetes(scaled=False)
    group = np.digitize(raw.data[:, 0], bands) if column == "age_band" else raw.data[:, 1].astype(np.int64)
    return scaled.data.astype(np.float32), scaled.target.astype(np.float32), group


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """In the target's units: root mean squared error, mean absolute error and R² (1 - SSE / SST,
    SST about these rows' own mean; 0 is as good as predicting that mean)."""
    err = pred - y
    sst = float(((y - y.mean()) ** 2).sum())
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()),
            "r2": 1.0 - float((err ** 2).sum()) / sst if sst > 0 else 0.0}


class DiabetesClient(Client):
    supports = {"prox", "scaffold", "steps"}

    def __init__(self, ctx):
        super().__init__(ctx)
        unknown = set(ctx.options) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown diabetes option(s) {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
        self.opts = {**DEFAULTS, **ctx.options}

    def _model(self) -> nn.Module:
        if not hasattr(self, "model"):
            torch.manual_seed(self.ctx.seed)
            h = int(self.opts["hidden"])
            self.model = nn.Sequential(nn.Linear(10, h), nn.ReLU(), nn.Linear(h, 1))
        return self.model

    def _data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """This client's patients, split into the rows it trains on and the ones it holds out."""
        if not hasattr(self, "rows"):
            part = self.ctx.data.get("partition") or {}
            x, y, group = load(part.get("column") or "age_band", list(self.opts["bands"]))
            mine = self.ctx.split(y, groups=group)
            rng = np.random.default_rng([self.ctx.seed, self.ctx.client])
            mine = rng.permutation(mine)
            k = max(1, int(round(len(mine) * float(self.opts["holdout"]))))
            y = (y - float(self.opts["target_shift"])) / float(self.opts["target_scale"])
            self.rows = {part: (torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
                         for part, idx in (("train", np.sort(mine[k:])), ("holdout", np.sort(mine[:k])))}
        return self.rows

    def _metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            pred = self._model()(x).squeeze(1)
        s = float(self.opts["target_scale"])
        m = regression_metrics(pred.numpy() * s, y.numpy() * s)  # back in the target's units
        m["loss"] = float(nn.functional.mse_loss(pred, y))  # what training minimises (scaled units)
        return m

    def init_params(self):
        return torch_params(self._model())

    def train(self, params, work) -> Fit:
        x, y = self._data()["train"]
        model = self._model()
        load_torch_params(model, params)
        fix = work.corrections(model)
        s = work.settings
        opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s.get("momentum", 0.0),
                              weight_decay=s.get("weight_decay", 0.0))
        gen = torch.Generator().manual_seed(work.seed)
        n, bs = len(y), int(s["batch_size"])
        # minibatches of a fresh shuffle each epoch, cut off after the round's budget of steps
        epochs = itertools.chain.from_iterable(torch.randperm(n, generator=gen).split(bs) for _ in itertools.count())
        steps = 0
        model.train()
        for idx in itertools.islice(epochs, work.budget(work.batches_per_epoch(n))):
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x[idx]).squeeze(1), y[idx]).backward()
            fix.apply()
            opt.step()
            steps += 1
        # the new local model on all of this client's training rows (not a running mean of batches)
        return Fit(torch_params(model), n, self._metrics(x, y), steps=steps)

    def evaluate(self, params) -> Evaluation:
        x, y = self._data()["holdout"]
        load_torch_params(self._model(), params)
        return Evaluation(len(y), self._metrics(x, y))
