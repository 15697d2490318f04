"""Evaluation of a set of params on arrays (central test set on the driver, or a client's shard)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedgrid.apps.datasets import Arrays


def evaluate(model: Any, params: dict[str, np.ndarray], data: Arrays, batch_size: int = 1000) -> dict[str, float]:
    import torch

    from fedgrid.apps.models import set_params

    set_params(model, params)
    model.eval()
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    total, correct, n = 0.0, 0, len(data.y)
    with torch.no_grad():
        for s in range(0, n, batch_size):
            xb = torch.from_numpy(np.array(data.x[s:s + batch_size], dtype=np.float32))
            yb = torch.from_numpy(np.array(data.y[s:s + batch_size], dtype=np.int64))
            out = model(xb)
            total += float(loss_fn(out, yb))
            correct += int((out.argmax(1) == yb).sum())
    return {"loss": total / max(n, 1), "accuracy": correct / max(n, 1)}
