"""A Flower app written as Flower's docs write one (Message API, numpy only), used by the Flower
tests: linear regression on a client's own synthetic data, chosen by ``partition-id``.

It keeps state in ``context.state`` the way a Flower app keeps it: a count of the rounds it trained
(a MetricRecord) and a momentum buffer (an ArrayRecord) that shapes its next update. So the global
model it produces depends on that state being exactly what it would be across rounds in Flower's
own simulation: a lost, stale or reset state gives another model. It is deterministic, so fedgrid
and Flower's simulation must agree to float precision. Handlers raise on request (run_config).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

DIM = 5

app = ClientApp()


def initial() -> ArrayRecord:
    """client.initial: the first global model (as a Flower ServerApp would make it)."""
    return ArrayRecord({"w": Array(np.zeros(DIM, np.float32)), "b": Array(np.zeros(1, np.float32))})


def data(partition: int, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + partition)
    n = 20 + 7 * partition  # unequal sizes: the weights matter
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    y = (x @ np.arange(1, DIM + 1, dtype=np.float32) + 0.5 + 0.1 * partition / max(partitions, 1)).astype(np.float32)
    return x, y


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    if context.run_config.get("raise_at") == int(msg.content["config"]["server-round"]) and pid == 0:
        raise RuntimeError("this handler was told to fail")
    w = msg.content["arrays"]["w"].numpy().copy()
    b = msg.content["arrays"]["b"].numpy().copy()
    lr = float(msg.content["config"]["lr"])
    x, y = data(pid, parts)
    seen = int(context.state["progress"]["rounds"]) if "progress" in context.state else 0
    mom = context.state["momentum"]["v"].numpy() if "momentum" in context.state else np.zeros(DIM, np.float32)
    for _ in range(3):
        err = x @ w + b - y
        gw, gb = (x.T @ err / len(y)).astype(np.float32), np.float32(err.mean())
        mom = (0.5 * mom + gw).astype(np.float32)
        w = (w - lr * mom / (1 + seen)).astype(np.float32)
        b = (b - lr * gb).astype(np.float32)
    context.state["progress"] = MetricRecord({"rounds": seen + 1})
    context.state["momentum"] = ArrayRecord({"v": Array(mom)})
    loss = float(np.mean((x @ w + b - y) ** 2))
    content = RecordDict({"arrays": ArrayRecord({"w": Array(w), "b": Array(b)}),
                          "metrics": MetricRecord({"num-examples": len(y), "train_loss": loss, "seen": seen})})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    x, y = data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
    w, b = msg.content["arrays"]["w"].numpy(), msg.content["arrays"]["b"].numpy()
    mse = float(np.mean((x @ w + b - y) ** 2))
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": len(y), "eval_mse": mse})}), reply_to=msg)
