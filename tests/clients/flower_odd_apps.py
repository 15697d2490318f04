"""Flower objects fedgrid must refuse, or run with all their parts (tests/unit/test_flower.py)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.serverapp.grid import Grid

server = ServerApp()


@server.main()
def _main(grid: Grid, context: Context) -> None:
    pass


custom = ClientApp()  # a train handler for an action fedgrid never sends


@custom.train()
def _train(msg: Message, context: Context) -> Message:
    return Message(msg.content, reply_to=msg)


@custom.train("finetune")
def _finetune(msg: Message, context: Context) -> Message:
    return Message(msg.content, reply_to=msg)


train_only = ClientApp()


@train_only.train()
def _only(msg: Message, context: Context) -> Message:
    return Message(msg.content, reply_to=msg)


EVENTS: list[str] = []


def stamp(msg: Message, context: Context, call_next) -> Message:  # noqa: ANN001 - a Flower mod
    """A mod, as Flower runs them around every handler: it adds a metric to the reply."""
    EVENTS.append(f"mod {msg.metadata.message_type} group {msg.metadata.group_id}")
    reply = call_next(msg, context)
    reply.content["metrics"]["stamped"] = 1.0
    return reply


full = ClientApp(mods=[stamp])


@full.lifespan()
def _life(context: Context):  # noqa: ANN202 - a Flower lifespan generator
    EVENTS.append("enter")
    yield
    EVENTS.append("exit")


@full.train()
def _full_train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    mode = context.run_config.get("mode", "ok")
    cfg = dict(msg.content["config"])
    if mode == "two-arrays":
        return Message(RecordDict({"a": arrays, "b": arrays, "metrics": MetricRecord({"num-examples": 3})}),
                       reply_to=msg)
    n = 0 if mode == "no-examples" else 3
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(
        {"num-examples": n, "train-acc": 0.5, "lr_seen": cfg["lr"], "round_seen": cfg["server-round"],
         "curve": [1.0, 2.0]})}), reply_to=msg)


@full.evaluate()
def _full_eval(msg: Message, context: Context) -> Message:
    rnd = msg.content["config"]["server-round"]
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 2, "eval_acc": 0.25, "rnd": rnd})}),
                   reply_to=msg)


def initial() -> ArrayRecord:
    import numpy as np

    return ArrayRecord([np.ones(2, np.float32)])
