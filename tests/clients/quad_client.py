"""A client whose training is a closed form, for checking personalization by hand: each client c
pulls every param toward its own target t_c = (c + 1) * [1, 2, 3] by `epochs` gradient steps on
||p - t_c||^2 / 2, plus FedProx's term mu * (p - G) when the round asks for it (Ditto's personal
model). Its params have a shared weight, a normalization statistic and a head."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from fedgrid.client import Client, Evaluation, Fit

NAMES = ("w", "bn.running_mean", "head.weight")


def target(client: int) -> np.ndarray:
    return (client + 1) * np.array([1.0, 2.0, 3.0], np.float32)


class QuadClient(Client):
    supports = {"prox"}

    def init_params(self):
        return OrderedDict((n, np.zeros(3, np.float32)) for n in NAMES)

    def train(self, params, work) -> Fit:
        lr, mu, t = work.settings["lr"], float(work.settings.get("prox_mu") or 0.0), target(self.ctx.client)
        out = OrderedDict((n, np.array(a, np.float32)) for n, a in params.items())
        for _ in range(work.epochs):
            for n in out:
                out[n] = (out[n] - lr * ((out[n] - t) + mu * (out[n] - work.global_params[n]))).astype(np.float32)
        return Fit(out, 10 + self.ctx.client, {"personal": float(work.personal)}, steps=work.epochs)

    def evaluate(self, params) -> Evaluation:
        t = target(self.ctx.client)
        return Evaluation(10, {"dist": float(sum(np.abs(a - t).sum() for a in params.values()))})
