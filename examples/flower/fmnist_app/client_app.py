"""The ClientApp: Flower's Message API, unchanged whether Flower's simulation or fedgrid runs it."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fmnist_app.task import Net, load_partition, test, train

app = ClientApp()

# the run config's keys and their defaults (pyproject.toml's [tool.flwr.app.config]; fedgrid's
# client.run_config): the Python API's run_simulation passes no run config, so the app needs them
DEFAULTS = {"data-root": "/usr/share/datasets/fashion-mnist", "max-rows": 2000, "local-epochs": 1, "batch-size": 32}


def setting(context: Context, key: str):  # noqa: ANN201 - a run-config value of any of Flower's types
    return context.run_config.get(key, DEFAULTS[key])


def _data(context: Context) -> tuple[torch.Tensor, ...]:
    return load_partition(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
                          str(setting(context, "data-root")), int(setting(context, "max-rows")))


def _net(msg: Message) -> Net:
    """The model the message carries (one torch thread: a node is one CPU)."""
    torch.set_num_threads(1)
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return net


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    net = _net(msg)
    x, y, _, _ = _data(context)
    rnd = int(msg.content["config"]["server-round"])
    loss = train(net, x, y, int(setting(context, "local-epochs")), int(setting(context, "batch-size")),
                 float(msg.content["config"]["lr"]), seed=rnd * 1000 + int(context.node_config["partition-id"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(y)})
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    _, _, xt, yt = _data(context)
    loss, acc = test(_net(msg), xt, yt)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(yt)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
