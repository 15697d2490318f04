"""A legacy Flower app (``ClientApp(client_fn=...)`` returning a ``NumPyClient``), as older Flower
code and many tutorials are written: the same regression as flower_numpy_app, without state."""

from __future__ import annotations

import numpy as np
from flower_numpy_app import DIM, data
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp


class RegressionClient(NumPyClient):
    def __init__(self, partition: int, partitions: int):
        self.x, self.y = data(partition, partitions)

    def get_parameters(self, config):
        return [np.zeros(DIM, np.float32), np.zeros(1, np.float32)]

    def fit(self, parameters, config):
        w, b = (np.array(a, np.float32) for a in parameters)
        lr = float(config["lr"])
        for _ in range(3):
            err = self.x @ w + b - self.y
            w = (w - lr * self.x.T @ err / len(self.y)).astype(np.float32)
            b = (b - lr * err.mean()).astype(np.float32)
        return [w, b], len(self.y), {"train_loss": float(np.mean((self.x @ w + b - self.y) ** 2))}

    def evaluate(self, parameters, config):
        w, b = parameters
        mse = float(np.mean((self.x @ w + b - self.y) ** 2))
        return mse, len(self.y), {"mse": mse}


def client_fn(context: Context):
    return RegressionClient(int(context.node_config["partition-id"]),
                            int(context.node_config["num-partitions"])).to_client()


app = ClientApp(client_fn=client_fn)
