"""A legacy Flower app in the style of Flower's PyTorch quickstart: ``client_fn`` returns a
``NumPyClient`` that trains a torch model on its partition (scikit-learn's digits, split by
``partition-id``). Told through ``run_config`` (``raise_at``), client 0's fit raises in that round."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from sklearn.datasets import load_digits
from torch import nn


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def partition(pid: int, parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    rows = np.arange(len(y))[pid::parts]
    return torch.tensor(x[rows] / 16.0, dtype=torch.float32), torch.tensor(y[rows])


class DigitsClient(NumPyClient):
    def __init__(self, pid: int, parts: int, raise_at: int):
        self.pid, self.raise_at = pid, raise_at
        self.model = net()
        self.x, self.y = partition(pid, parts)

    def get_parameters(self, config):
        return [v.detach().numpy().copy() for v in self.model.state_dict().values()]

    def set_parameters(self, parameters) -> None:
        keys = self.model.state_dict().keys()
        self.model.load_state_dict(OrderedDict((k, torch.tensor(v)) for k, v in zip(keys, parameters, strict=True)))

    def fit(self, parameters, config):
        if self.pid == 0 and int(config["server-round"]) == self.raise_at:
            raise ValueError(f"client {self.pid} was told to fail in round {self.raise_at}")
        self.set_parameters(parameters)
        opt = torch.optim.SGD(self.model.parameters(), lr=float(config["lr"]))
        for i in range(0, len(self.y), 32):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(self.model(self.x[i:i + 32]), self.y[i:i + 32])
            loss.backward()
            opt.step()
        return self.get_parameters(config), len(self.y), {"train_loss": float(loss)}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        with torch.no_grad():
            out = self.model(self.x)
        acc = float((out.argmax(1) == self.y).float().mean())
        return float(nn.functional.cross_entropy(out, self.y)), len(self.y), {"accuracy": acc}


def client_fn(context: Context):
    return DigitsClient(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
                        int(context.run_config.get("raise_at", 0))).to_client()


app = ClientApp(client_fn=client_fn)
