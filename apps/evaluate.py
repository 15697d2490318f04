"""Evaluation of a set of params on arrays (the central test set on the driver, or a client's shard).

The arrays are turned into torch tensors once and kept (a test set is evaluated every round), and
inference runs under ``torch.inference_mode`` in batches of 64: measured on this machine's CPU that
is ~2x faster than re-reading a memory-mapped array per batch with autograd bookkeeping on.

It runs where the model is: on a GPU each batch is moved there and the sums are read once at the
end; on the CPU the arithmetic (float64 sums of each batch's float32 loss) is what it always was.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedgrid.apps.datasets import Arrays

_TENSORS: dict[int, tuple[Arrays, Any, Any]] = {}


def _tensors(data: Arrays):
    import torch

    hit = _TENSORS.get(id(data))
    if hit is None or hit[0] is not data:
        hit = (data, torch.from_numpy(np.array(data.x, dtype=np.float32)), torch.from_numpy(np.array(data.y)))
        _TENSORS.clear()
        _TENSORS[id(data)] = hit
    return hit[1], hit[2]


def evaluate(model: Any, params: dict[str, np.ndarray], data: Arrays, batch_size: int = 64) -> dict[str, float]:
    import torch

    from fedgrid.apps.devices import model_device, on
    from fedgrid.apps.models import set_params

    set_params(model, params)
    model.eval()
    x, y = _tensors(data)
    device = model_device(model)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    n = len(y)
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            xb, yb = on(device, x[s:s + batch_size], y[s:s + batch_size])
            out = model(xb)
            total += loss_fn(out, yb).double()
            correct += (out.argmax(1) == yb).sum()
    return {"loss": float(total) / max(n, 1), "accuracy": int(correct) / max(n, 1)}
