"""A user's client written against the public API only (fedgrid.client): the same minibatch SGD
as fedgrid's built-in loop, written out with the helpers a user gets (work.corrections for FedProx
and SCAFFOLD, work.budget for pacing, the built-in partitioners through fedgrid.apps.datasets)."""

from __future__ import annotations

import numpy as np
import torch

from fedgrid.apps.datasets import client_arrays
from fedgrid.apps.models import build
from fedgrid.client import Client, Fit, load_torch_params, torch_params


class SGDClient(Client):
    supports = {"prox", "scaffold", "steps"}

    def _model(self) -> torch.nn.Module:
        if not hasattr(self, "model"):
            torch.manual_seed(self.ctx.seed)  # as the built-in client seeds its initial model
            self.model = build(self.ctx.options.get("model", "mlp"), (1, 8, 8), 10, {})
        return self.model

    def init_params(self):
        return torch_params(self._model())

    def train(self, params, work) -> Fit:
        model = self._model()
        load_torch_params(model, params)
        arr = client_arrays(self.ctx.data, self.ctx.client, self.ctx.clients, self.ctx.seed)
        x, y = torch.from_numpy(np.array(arr.x)), torch.from_numpy(np.array(arr.y))
        fix = work.corrections(model)
        s = work.settings
        opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
        gen = torch.Generator().manual_seed(work.seed)
        n, bs = len(y), s["batch_size"]
        budget, steps, abs_err = work.budget(work.batches_per_epoch(n)), 0, 0.0
        model.train()
        while steps < budget:
            for idx in torch.randperm(n, generator=gen).split(bs):
                if steps >= budget:
                    break
                opt.zero_grad(set_to_none=True)
                out = model(x[idx])
                loss = torch.nn.functional.cross_entropy(out, y[idx])
                loss.backward()
                fix.apply()
                opt.step()
                abs_err += float((out.argmax(1) != y[idx]).float().sum())
                steps += 1
        return Fit(torch_params(model), n, {"error_rate": abs_err / max(1, steps * bs), "steps_taken": steps},
                   steps=steps)
