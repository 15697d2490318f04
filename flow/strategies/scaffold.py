"""SCAFFOLD: stochastic controlled averaging; control variates cancel client drift.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020.
The server keeps a control variate ``c`` and every client ``i`` its own ``c_i``, estimates of
the global and the local gradient direction. Each local step uses ``grad + c - c_i``, so a client
follows the global direction rather than its own data's; afterwards it updates
``c_i+ = c_i - c + (G - y_i) / (K * lr)`` (option II). The server steps
``G' = G + server_lr * mean(y_i - G)`` and ``c' = c + |S| / N * mean(c_i+ - c_i)``.

Where the state lives: ``c`` is the strategy state (checkpointed with the round). Each ``c_i``
stays in the data plane, one object per client in ``<store>/state/scaffold/``, written by the
client's site (apps/corrections.py); the driver's checkpoint holds only a reference (uri,
sha256, size) to each client's current object, so a resume reads exactly the variates that round
was aggregated with, and an object newer than the checkpoint is never used. Each task writes under
a key of its own (an abandoned attempt's late write never replaces an accepted one), and a site
deletes only its client's objects that neither the current nor the previous reference names: the
checkpoint being written in the background while the next round trains may still need the
previous one. Option II assumes plain SGD at the clients, so ``train.momentum`` must be 0.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.strategies.base import Params, Strategy, StrategyOptions, server_step

STATE_DIR = "state/scaffold"


class ScaffoldOptions(StrategyOptions):
    name: Literal["scaffold"] = "scaffold"
    server_lr: Annotated[float, Field(gt=0)] = 1.0  # eta_g


class Scaffold(Strategy):
    name = "scaffold"
    Options = ScaffoldOptions
    opts: ScaffoldOptions
    needs_store = True
    needs = frozenset({"scaffold"})

    @classmethod
    def check_job(cls, job: Any) -> tuple[str, str] | None:
        if job.train.momentum:
            return "train.momentum", (f"scaffold's control-variate update assumes plain SGD at the clients; "
                                      f"expected 0, got {job.train.momentum:g}")
        return super().check_job(job)

    def __init__(self, opts: ScaffoldOptions | None = None):
        super().__init__(opts)
        self.c: Params = OrderedDict()  # server control variate (float32, trainable params only)
        self.refs: dict[int, dict[str, Any]] = {}  # client -> its current c_i object {uri, sha256, nbytes}
        self.prev: dict[int, dict[str, Any]] = {}  # ... and the one before (an older checkpoint's)
        self.clients = 0
        self.store_url = ""

    def bind(self, clients: int, store_url: str | None) -> None:
        self.clients, self.store_url = clients, store_url or ""

    def configure(self, rnd: int, clients: list[int], profiles: dict[str, np.ndarray]) -> dict[int, dict[str, Any]]:
        if not self.store_url:
            raise RuntimeError("scaffold needs the store for its client variates (the driver binds it)")
        c = {k: v.astype(np.float32) for k, v in self.c.items()}
        return {cl: {"scaffold": {
            "c": c, "ci": self.refs.get(cl), "store": self.store_url,
            "keep": [r["uri"].rsplit("/", 1)[-1] for r in (self.refs.get(cl), self.prev.get(cl)) if r],
            "key": f"{STATE_DIR}/client-{cl:06d}/round-{rnd:06d}-{uuid.uuid4().hex[:8]}"}} for cl in clients}

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        out = server_step(updates, global_params, lambda name, g, delta: g + self.opts.server_lr * delta)
        fresh = [u for u in updates if "scaffold_delta_c" in u.extras and not u.staleness]
        if fresh:
            share = len(fresh) / max(self.clients, len(fresh))
            for name in fresh[0].extras["scaffold_delta_c"]:
                mean = np.mean([np.asarray(u.extras["scaffold_delta_c"][name], np.float64) for u in fresh], axis=0)
                self.c[name] = self.c.get(name, np.zeros_like(mean)) + share * mean
            for u in fresh:
                if u.client in self.refs:
                    self.prev[u.client] = self.refs[u.client]
                self.refs[u.client] = dict(u.extras["scaffold_ci"])
        return out

    def state(self) -> Params:
        out: Params = OrderedDict((f"c/{k}", v) for k, v in self.c.items())
        for tag, refs in (("ci", self.refs), ("cp", self.prev)):
            for cl, ref in sorted(refs.items()):
                out[f"{tag}/{cl}/nbytes"] = np.array(ref["nbytes"], np.int64)
                out[f"{tag}/{cl}/sha256"] = np.frombuffer(bytes.fromhex(ref["sha256"]), np.uint8)
                out[f"{tag}/{cl}/uri"] = np.frombuffer(ref["uri"].encode(), np.uint8)
        return out

    def load_state(self, state: Params) -> None:
        self.c = OrderedDict((k[2:], np.asarray(v, np.float64)) for k, v in state.items() if k.startswith("c/"))
        self.refs, self.prev = _refs(state, "ci"), _refs(state, "cp")


def _refs(state: Params, tag: str) -> dict[int, dict[str, Any]]:
    out = {}
    for k, v in state.items():
        if k.startswith(f"{tag}/") and k.endswith("/uri"):
            cl = k.split("/")[1]
            out[int(cl)] = {"uri": bytes(np.asarray(v, np.uint8)).decode(),
                            "sha256": bytes(np.asarray(state[f"{tag}/{cl}/sha256"], np.uint8)).hex(),
                            "nbytes": int(state[f"{tag}/{cl}/nbytes"])}
    return out
