"""A client with no torch at all: multinomial logistic regression by minibatch SGD in numpy on
its share of scikit-learn's digits, to show the API is framework-neutral."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from fedgrid.client import Client, Evaluation, Fit


class NumpyLogReg(Client):
    supports = {"steps"}

    def _data(self):
        if not hasattr(self, "x"):
            from sklearn.datasets import load_digits

            d = load_digits()
            idx = self.ctx.split(d.target)
            self.x, self.y = (d.data[idx] / 16.0).astype(np.float32), d.target[idx]
        return self.x, self.y

    def init_params(self):
        return OrderedDict(w=np.zeros((64, 10), np.float32), b=np.zeros(10, np.float32))

    def _grad(self, w, b, x, y):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        return x.T @ p / len(y), p.mean(0)

    def train(self, params, work) -> Fit:
        x, y = self._data()
        w, b = params["w"].copy(), params["b"].copy()
        rng = np.random.default_rng(work.seed)
        lr = work.settings["lr"]
        budget, steps = work.budget(work.batches_per_epoch(len(y))), 0
        while steps < budget:
            for idx in np.array_split(rng.permutation(len(y)), work.batches_per_epoch(len(y))):
                if steps >= budget:
                    break
                gw, gb = self._grad(w, b, x[idx], y[idx])
                w -= lr * gw
                b -= lr * gb
                steps += 1
        return Fit(OrderedDict(w=w.astype(np.float32), b=b.astype(np.float32)), len(y),
                   {"accuracy": float(((x @ w + b).argmax(1) == y).mean())}, steps=steps)

    def evaluate(self, params) -> Evaluation:
        x, y = self._data()
        return Evaluation(len(y), {"accuracy": float(((x @ params["w"] + params["b"]).argmax(1) == y).mean())})
