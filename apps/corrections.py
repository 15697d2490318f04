"""Per-step gradient corrections a strategy asks of local training.

- FedProx (``train.prox_mu``): the proximal term ``mu / 2 * ||w - G||^2`` adds ``mu * (w - G)``
  to each step's gradient, pulling the local model back toward the global one.
- SCAFFOLD (``train.scaffold``): each step's gradient is corrected by ``c - c_i`` (the server's
  control variate minus this client's), which cancels the client's drift toward its own data.
  After training the client's new variate is ``c_i+ = c_i - c + (G - y) / (K * lr)`` (option II of
  Karimireddy et al. 2020). With heavy-ball momentum ``mu`` (``train.momentum``) the corrected
  gradient goes through the momentum buffer, and ``K * lr`` becomes the length of path the
  optimiser takes per unit of gradient, ``lr * sum_{k=1..K} (1 - mu^k) / (1 - mu)``: the same
  normalisation FedNova derives for local momentum (Wang et al. 2020, ``||a_i||_1``). For a
  constant gradient it gives back exactly that gradient, as option II does for plain SGD, so the
  variates keep estimating gradients however the clients' momentum is set. (Cheng et al.,
  "Momentum Benefits Non-IID Federated Learning Simply and Provably", ICLR 2024, add momentum to
  SCAFFOLD differently, mixing the server's last direction into each step: not built.)
  The variate never leaves its site: it is part of the client's state (apps/sitestate.py, one
  versioned object per client in the site's store), so a resumed run, and whichever worker runs
  the client, corrects with exactly the variate its last aggregated update left; only
  ``c_i+ - c_i`` goes back to the driver for the server's ``c``.

Both act on the model's trainable parameters only (not on buffers such as BatchNorm statistics),
on whichever device each parameter is (a client's GPU: ``ctx.device``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from fedgrid.apps.records import Extras, ScaffoldInstruction, TrainSettings


class Corrections:
    def __init__(self, train: TrainSettings, model: Any, global_params: dict[str, np.ndarray], kept: Any = None):
        """`train`: the task's train block, where the strategy put its instructions; `kept`: what the
        site keeps for this client (apps/sitestate.Kept), where SCAFFOLD's variate lives."""
        import torch

        tr = train
        self.params = OrderedDict((n, p) for n, p in model.named_parameters() if p.requires_grad)
        self.mu = float(tr.get("prox_mu") or 0.0)
        self.sc: ScaffoldInstruction | None = tr.get("scaffold")
        self.kept = kept
        self.anchor = {n: torch.from_numpy(np.asarray(global_params[n])).to(p.device) for n, p in self.params.items()} \
            if (self.mu or self.sc) else {}
        self.lr = float(tr["lr"])
        self.momentum = float(tr.get("momentum") or 0.0)
        self.ci: dict[str, np.ndarray] = {}
        self.shift: dict[str, Any] = {}
        if self.sc:
            if kept is None:
                raise RuntimeError("scaffold needs the client's kept state (the site runtime passes it)")
            mine = kept.scaffold or {}
            self.ci = {n: np.asarray(mine[n], np.float32) if n in mine else np.zeros(tuple(p.shape), np.float32)
                       for n, p in self.params.items()}
            c = self.sc.get("c") or {}
            self.shift = {n: torch.from_numpy(np.asarray(c[n], np.float32) - self.ci[n] if n in c else -self.ci[n])
                          .to(p.device) for n, p in self.params.items()}

    @property
    def active(self) -> bool:
        return bool(self.mu or self.sc)

    def apply(self) -> None:
        """Correct the gradients in place; call after backward(), before the optimiser step."""
        for n, p in self.params.items():
            if p.grad is None:
                continue
            if self.mu:
                p.grad.add_(p.detach() - self.anchor[n], alpha=self.mu)
            if self.sc:
                p.grad.add_(self.shift[n])

    def finish(self, steps: int) -> Extras:
        """SCAFFOLD: the client's new variate goes into its kept state (written with it, and its
        only if the driver aggregates this update); returns what the driver needs, its change."""
        if not self.sc:
            return {}
        c = self.sc.get("c") or {}
        new, delta = OrderedDict(), OrderedDict()
        path = path_length(steps, self.momentum) * self.lr
        for n, p in self.params.items():
            drift = (self.anchor[n].cpu().numpy() - p.detach().cpu().numpy()) / path
            new[n] = (self.ci[n] - np.asarray(c.get(n, 0.0), np.float32) + drift).astype(np.float32)
            delta[n] = new[n] - self.ci[n]
        self.kept.scaffold = new
        return {"scaffold_delta_c": delta}


def path_length(steps: int, momentum: float) -> float:
    """``sum_{k=1..K} (1 - mu^k) / (1 - mu)``: how far K heavy-ball steps from a zero buffer move per
    unit of a constant gradient and of lr (K for plain SGD; about ``K / (1 - mu)`` for long runs)."""
    k = max(int(steps), 1)
    if momentum <= 0:
        return float(k)
    return (k - momentum * (1 - momentum**k) / (1 - momentum)) / (1 - momentum)
