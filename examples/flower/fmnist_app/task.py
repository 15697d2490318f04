"""The model, the data and the training loop, as in a Flower template's ``task.py``.

Each node reads its partition of Fashion-MNIST from the four original idx files (Debian's
``dataset-fashion-mnist`` installs them in /usr/share/datasets/fashion-mnist), chosen by the
``partition-id`` and ``num-partitions`` its node config carries: nothing is downloaded.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

MEAN, STD = 0.2860, 0.3530


class Net(nn.Module):
    """A small CNN: two conv layers and two linear ones."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32 * 7 * 7, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def initial_arrays() -> ArrayRecord:
    """The first global model (the ServerApp's, and fedgrid's ``client.initial``)."""
    torch.manual_seed(0)
    return ArrayRecord(Net().state_dict())


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


@lru_cache(maxsize=2)
def _split(root: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = _idx(Path(root) / f"{name}-images-idx3-ubyte.gz")
    y = _idx(Path(root) / f"{name}-labels-idx1-ubyte.gz")
    return ((x.astype(np.float32) / 255.0 - MEAN) / STD)[:, None], y.astype(np.int64)


def load_partition(pid: int, parts: int, root: str, limit: int) -> tuple[torch.Tensor, ...]:
    """This node's training and test rows: every parts-th row from pid, at most `limit` training rows."""
    x, y = _split(root, "train")
    xt, yt = _split(root, "t10k")
    tr, te = np.arange(pid, len(y), parts)[:limit], np.arange(pid, len(yt), parts)
    return torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), torch.from_numpy(xt[te]), torch.from_numpy(yt[te])


def train(net: Net, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, lr: float, seed: int) -> float:
    """Plain SGD; returns the mean training loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


def test(net: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy."""
    net.eval()
    with torch.no_grad():
        out = net(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
