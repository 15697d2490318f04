"""A stateful client as a user writes one: a small CNN with BatchNorm, Adam kept on the object
across rounds, a cosine learning rate over the job's rounds (work.schedule), a numpy RNG that picks
which batches to skip, and a call counter. Everything that carries over between rounds is in
get_state(), so fedgrid can make it exact across rounds, workers and resumes."""

from __future__ import annotations

import numpy as np
import torch

from fedgrid.apps.datasets import client_arrays
from fedgrid.client import Client, Evaluation, Fit, load_torch_params, torch_params


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(x.flatten(1))


class StatefulClient(Client):
    supports = {"prox"}

    def __init__(self, ctx):
        super().__init__(ctx)
        torch.manual_seed(ctx.seed)
        self.model = Net()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.rng = np.random.default_rng([ctx.seed, ctx.client])
        self.calls = 0

    def init_params(self):
        return torch_params(self.model)

    def _data(self, part: str):
        arr = client_arrays(self.ctx.data, self.ctx.client, self.ctx.clients, self.ctx.seed)
        x, y = torch.from_numpy(np.array(arr.x)), torch.from_numpy(np.array(arr.y))
        cut = max(1, len(y) // 5)
        return (x[cut:], y[cut:]) if part == "train" else (x[:cut], y[:cut])

    def train(self, params, work) -> Fit:
        self.calls += 1
        load_torch_params(self.model, params)
        fix = work.corrections(self.model)
        for group in self.opt.param_groups:
            group["lr"] = work.schedule(self.ctx.options.get("lr", 1e-2), 1e-3)
        x, y = self._data("train")
        gen = torch.Generator().manual_seed(work.seed)
        self.model.train()
        loss = torch.zeros(())
        for idx in torch.randperm(len(y), generator=gen).split(16):
            if self.rng.random() < 0.2:  # the RNG's stream is state too
                continue
            self.opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.model(x[idx]), y[idx])
            loss.backward()
            fix.apply()
            self.opt.step()
        step = max((float(s["step"]) for s in self.opt.state.values()), default=0.0)
        return Fit(torch_params(self.model), len(y), {"loss": float(loss.detach()), "adam_step": step,
                                                       "calls": float(self.calls)})

    def evaluate(self, params) -> Evaluation:
        load_torch_params(self.model, params)
        x, y = self._data("holdout")
        self.model.eval()
        with torch.no_grad():
            acc = float((self.model(x).argmax(1) == y).float().mean())
        return Evaluation(len(y), {"accuracy": acc})

    def get_state(self):
        return {"opt": self.opt.state_dict(), "rng": self.rng.bit_generator.state, "calls": self.calls}

    def set_state(self, state) -> None:
        self.opt.load_state_dict(state["opt"])
        self.rng.bit_generator.state = state["rng"]
        self.calls = state["calls"]
