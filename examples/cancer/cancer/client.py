"""A client with no torch: scikit-learn's own ``SGDClassifier`` (logistic loss) trained with
``partial_fit`` on minibatches, on scikit-learn's breast-cancer data (569 tumours, 30 features,
malignant or benign), with binary metrics of its own: ROC AUC, log-loss, accuracy, and the recall
of malignant tumours (``sensitivity``; the costly miss).

The params that cross are the estimator's own arrays (``coef_``, ``intercept_``) as numpy: fedgrid
averages them like any model's. Every round the client sets them on its estimator, calls
``partial_fit`` once per minibatch for the round's ``work.budget`` of steps (a paced budget, too:
``supports = {"steps"}``), and returns the estimator's arrays.

    client: {path: cancer.client:CancerClient, options: {alpha: 0.0001, holdout: 0.3}}
    data: {dataset: custom, clients: 6, partition: {kind: dirichlet, alpha: 1.0}}

The features are measured on very different scales (areas in the thousands, smoothness near 0.1):
``log1p`` of each puts them within 0..9 by a fixed transform that needs no client's statistics.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from fedgrid.client import Client, Evaluation, Fit

DEFAULTS: dict[str, Any] = {"alpha": 1e-4, "holdout": 0.3}
CLASSES = np.array([0, 1])  # scikit-learn's coding: 0 malignant, 1 benign


def binary_metrics(score: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """From decision scores (log-odds of benign): accuracy, log-loss (``loss``), malignant recall, and ROC AUC
    when both classes are present (a client with one class has none)."""
    from sklearn.metrics import log_loss, roc_auc_score

    pred = (score > 0).astype(np.int64)
    p = 1.0 / (1.0 + np.exp(-np.clip(score, -30, 30)))
    m = {"accuracy": float((pred == y).mean()), "loss": float(log_loss(y, p, labels=CLASSES))}
    if (y == 0).any():
        m["sensitivity"] = float((pred[y == 0] == 0).mean())
    if len(np.unique(y)) == 2:
        m["auc"] = float(roc_auc_score(y, score))
    return m


class CancerClient(Client):
    supports = {"steps"}  # no torch model, so no FedProx/SCAFFOLD corrections: pacing only

    def __init__(self, ctx):
        super().__init__(ctx)
        unknown = set(ctx.options) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown cancer option(s) {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
        self.opts = {**DEFAULTS, **ctx.options}

    def _rows(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """This client's tumours (its share by ``data.partition``), split into train and held out,
        stratified so both parts keep the client's own class mix."""
        if not hasattr(self, "rows"):
            from sklearn.datasets import load_breast_cancer
            from sklearn.model_selection import train_test_split

            d = load_breast_cancer()
            mine = self.ctx.split(d.target)
            x, y = np.log1p(d.data[mine]), d.target[mine]
            strat = y if np.bincount(y, minlength=2).min() >= 2 else None
            xt, xh, yt, yh = train_test_split(x, y, test_size=float(self.opts["holdout"]), stratify=strat,
                                              random_state=self.ctx.seed + self.ctx.client)
            self.rows = {"train": (xt, yt), "holdout": (xh, yh)}
        return self.rows

    def _estimator(self, params, lr: float):  # noqa: ANN202 - an SGDClassifier with the global weights
        from sklearn.linear_model import SGDClassifier

        est = SGDClassifier(loss="log_loss", penalty="l2", alpha=float(self.opts["alpha"]),
                            learning_rate="constant", eta0=lr, shuffle=False)
        est.coef_ = params["coef"].copy()
        est.intercept_ = params["intercept"].copy()
        return est

    def init_params(self):
        return OrderedDict(coef=np.zeros((1, 30)), intercept=np.zeros(1))

    def train(self, params, work) -> Fit:
        x, y = self._rows()["train"]
        est = self._estimator(params, float(work.settings["lr"]))
        rng = np.random.default_rng(work.seed)
        bs, n = int(work.settings["batch_size"]), len(y)
        budget, steps = work.budget(work.batches_per_epoch(n)), 0
        while steps < budget:
            order = rng.permutation(n)
            for s in range(0, n, bs):
                if steps >= budget:
                    break
                idx = order[s:s + bs]
                est.partial_fit(x[idx], y[idx], classes=CLASSES)
                steps += 1
        out = OrderedDict(coef=est.coef_.copy(), intercept=est.intercept_.copy())
        return Fit(out, n, binary_metrics(est.decision_function(x), y), steps=steps)

    def evaluate(self, params) -> Evaluation:
        x, y = self._rows()["holdout"]
        return Evaluation(len(y), binary_metrics(x @ params["coef"][0] + params["intercept"][0], y))
