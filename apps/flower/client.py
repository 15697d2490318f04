"""``FlowerClient``: a Flower ClientApp as one fedgrid client (apps/client.py's API).

One object per client per worker, as for any client, holding the app and the client's Flower
``Context``: ``node_config`` carries ``partition-id`` (the fedgrid client id) and
``num-partitions`` (``data.clients``), the conventions of Flower's simulation, so an app that
loads its partition from them finds the same data here; ``run_config`` is the job's
``client.run_config``; ``state`` is the client's state (``get_state``/``set_state``), so it is
exact across rounds, workers and resumes. Each round the app is called the way Flower's runtime
calls it, ``app(message, context)`` (its lifespan and mods included), with a ``train`` or
``evaluate`` message whose content is what Flower's strategies send.

Changes an evaluate handler makes to ``Context.state`` are not kept (fedgrid reloads a client's
state after evaluating it); a train handler's are.
"""

from __future__ import annotations

import hashlib
import importlib
import time
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np

from fedgrid.apps.client import Context, Evaluation, Fit, Params, Work
from fedgrid.apps.flower import records
from fedgrid.apps.flower.app import flwr_imported, is_legacy

STATE = "context_state"  # the key of Context.state in the client's state tree


def load(path: str) -> Any:
    """The object a ``package.module:name`` path names (its module imported here)."""
    mod, _, attr = path.partition(":")
    return getattr(importlib.import_module(mod), attr)


def node_id(run_id: int, client: int) -> int:
    """A stable Flower node id for a client (Flower draws random 64-bit ids; a resume must see the same)."""
    return int(hashlib.sha256(f"{run_id}/{client}".encode()).hexdigest()[:15], 16)


class FlowerClient:
    """Runs the job's Flower ClientApp for one client (``client.flower``)."""

    supports: frozenset[str] = frozenset()  # Flower apps run their own loop: no fedgrid hooks in it

    def __init__(self, ctx: Context):
        flwr_imported()
        from flwr.app import Context as FlowerContext
        from flwr.app import RecordDict

        self.ctx = ctx
        opts = ctx.options
        self.app = load(opts["app"])
        self.legacy = is_legacy(self.app)
        self.run_id = int(opts["run_id"])
        self.node_id = node_id(self.run_id, ctx.client)
        self.context = FlowerContext(run_id=self.run_id, node_id=self.node_id,
                                     node_config={"partition-id": ctx.client, "num-partitions": ctx.clients},
                                     state=RecordDict(), run_config=dict(opts.get("run_config") or {}))
        self.evaluation_round = 0  # set by the site before evaluate(): Flower's evaluate config names the round

    # -- fedgrid's client API ---------------------------------------------------------------------
    def init_params(self) -> Params:
        """The initial model: ``client.initial``'s arrays, or a legacy client's ``get_parameters``."""
        if path := self.ctx.options.get("initial"):
            return records.initial_arrays(load(path)())
        if not self.legacy:
            raise ValueError("a Message API app needs client.initial (its initial arrays)")
        return self._legacy_parameters()

    def train(self, params: Params, work: Work) -> Fit:
        cfg = records.config(work.settings, work.round)
        if self.legacy:
            return self._legacy_train(params, cfg)
        reply = self._ask("train", work.round, params, cfg)
        arrays, values = _one(reply, "ArrayRecord", "train"), _one(reply, "MetricRecord", "train")
        return Fit(records.from_record(arrays), records.examples(values, "train"),
                   records.metrics(values, "train_"), steps=records.steps(values))

    def evaluate(self, params: Params) -> Evaluation:
        cfg = {"server-round": int(self.evaluation_round)}
        if self.legacy:
            return self._legacy_evaluate(params, cfg)
        values = _one(self._ask("evaluate", self.evaluation_round, params, cfg), "MetricRecord", "evaluate")
        return Evaluation(records.examples(values, "evaluate"), records.metrics(values, "eval_"))

    def get_state(self) -> dict[str, Any]:
        return {STATE: records.state_bytes(self.context.state)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.context.state = records.state_from(np.asarray(state[STATE]))

    # -- messages ---------------------------------------------------------------------------------
    def _message(self, kind: str, rnd: int, content: Any) -> Any:
        """A message as the SuperLink hands it to a node: ids set, from the server, this round's group."""
        from flwr.app import Message
        from flwr.common import DEFAULT_TTL, Metadata
        from flwr.common.constant import SUPERLINK_NODE_ID

        meta = Metadata(run_id=self.run_id, message_id=uuid.uuid4().hex, src_node_id=SUPERLINK_NODE_ID,
                        dst_node_id=self.node_id, reply_to_message_id="", group_id=str(rnd),
                        created_at=time.time(), ttl=DEFAULT_TTL, message_type=kind)
        # flwr takes metadata= (its own way to build a message as the SuperLink does) but leaves it out of
        # Message's typed overloads
        return Message(content=content, metadata=meta)  # type: ignore[call-overload]

    def _call(self, kind: str, rnd: int, content: Any) -> Any:
        """The app's reply content; an error reply (a mod refused, a legacy client failed) raises."""
        reply = self.app(self._message(kind, rnd, content), self.context)
        if reply.has_error():
            raise RuntimeError(f"the app's {kind} reply is an error: {reply.error.reason} (code {reply.error.code})")
        return reply.content

    def _ask(self, kind: str, rnd: int, params: Params, cfg: dict[str, Any]) -> Any:
        from flwr.app import ConfigRecord, RecordDict

        return self._call(kind, rnd, RecordDict({"arrays": records.to_record(params), "config": ConfigRecord(cfg)}))

    # -- the legacy API (client_fn -> NumPyClient / Client), in Flower's legacy message format ----
    def _legacy_parameters(self) -> Params:
        from flwr.common import GetParametersIns, MessageTypeLegacy, parameters_to_ndarrays
        from flwr.compat.common import recorddict_compat as compat

        content = compat.getparametersins_to_recorddict(GetParametersIns(config={}))
        res = compat.recorddict_to_getparametersres(self._call(MessageTypeLegacy.GET_PARAMETERS, 0, content), False)
        return records.initial_arrays(parameters_to_ndarrays(res.parameters))

    def _legacy_train(self, params: Params, cfg: dict[str, Any]) -> Fit:
        from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.compat.common import recorddict_compat as compat

        ins = FitIns(ndarrays_to_parameters(list(params.values())), _legacy_config(cfg))
        res = compat.recorddict_to_fitres(self._call("train", cfg["server-round"],
                                                     compat.fitins_to_recorddict(ins, True)), False)
        got = parameters_to_ndarrays(res.parameters)
        if len(got) != len(params):
            raise ValueError(f"the client's fit() returned {len(got)} arrays; expected {len(params)} like the model")
        out = {k: np.asarray(a) for k, a in zip(params, got, strict=True)}
        return Fit(OrderedDict(out), records.examples({records.WEIGHT: res.num_examples}, "fit"),
                   records.metrics(res.metrics, "train_"))

    def _legacy_evaluate(self, params: Params, cfg: dict[str, Any]) -> Evaluation:
        from flwr.common import EvaluateIns, ndarrays_to_parameters
        from flwr.compat.common import recorddict_compat as compat

        ins = EvaluateIns(ndarrays_to_parameters(list(params.values())), _legacy_config(cfg))
        res = compat.recorddict_to_evaluateres(self._call("evaluate", cfg["server-round"],
                                                          compat.evaluateins_to_recorddict(ins, True)))
        n = records.examples({records.WEIGHT: res.num_examples}, "evaluate")
        return Evaluation(n, {"loss": float(res.loss), **records.metrics(res.metrics, "eval_")})


def _legacy_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A legacy FitIns/EvaluateIns config holds scalars only."""
    return {k: v for k, v in cfg.items() if not isinstance(v, list)}


def _one(content: Any, kind: str, what: str) -> Any:
    """The reply's one record of a kind, as Flower's strategies require it (any key)."""
    found = content.array_records if kind == "ArrayRecord" else content.metric_records
    if len(found) != 1:
        raise ValueError(f"the app's {what} reply holds {len(found)} {kind}s ({sorted(found)}); expected exactly "
                         f"one, as Flower's strategies do")
    return next(iter(found.values()))
