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
previous one. Option II assumes plain SGD at the clients, and a job with ``train.momentum`` is
refused (``check_job``): with variates divided by momentum's longer path, the quickstart's
momentum 0.9 still ran away after round 6. apps/corrections.py keeps that momentum-aware divisor;
at momentum 0 it is ``K * lr``.

Under ``round.aggregate: site`` a client's ``c_i+ - c_i`` stays at its site with its update; the
site's partial carries its clients' mean delta, and the driver takes their references from the
clients' own answers: the server's ``c`` moves by the same mean as over the clients.
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
        """Refuse client momentum. SCAFFOLD's corrections are constant vectors applied at every
        local step; momentum carries each of them ``1 / (1 - momentum)`` times as far with nothing
        to damp an error in them, and the method's analysis bounds the local step size
        (Karimireddy et al. 2020). The quickstart's momentum 0.9 reached 0.897 at round 6 and ran
        away to 0.092 by round 20; a warning let that run, so this is a refusal.

        The suggested rate is ``min(lr / (1 - momentum), 2 * lr)``: never a longer step than the
        job's own optimiser took, and at most twice its lr, because on the quickstart (lr 0.05,
        momentum 0.9) plain SGD at 2x was best (0.953 at round 20, above FedAvg's 0.944 on the
        same line), 3x fell back to 0.838 and 4x and 10x diverged."""
        if (problem := super().check_job(job)) is not None:
            return problem
        mu, lr = job.train.momentum, job.train.lr
        if not mu:
            return None
        return "train.momentum", (f"client momentum {mu:g} carries each of scaffold's per-step corrections "
                                  f"{1 / (1 - mu):.3g}x as far, which its variates do not survive (the quickstart "
                                  f"collapsed after round 6); set train.momentum: 0 and train.lr: "
                                  f"{min(lr / (1 - mu), 2 * lr):.3g}")

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

    @classmethod
    def site_weights(cls) -> str | None:
        return "examples"  # its server step is on the example-weighted mean; c moves by the mean delta

    def check_answer(self, u: ClientUpdate, sent: dict[str, Any]) -> None:
        """The new variate's reference must name the object this task was told to write: it is
        checkpointed and handed to the client next round, and a site must not point another
        client, or the driver, at an object of its choosing."""
        ref, key = u.extras.get("scaffold_ci"), (sent.get("scaffold") or {}).get("key")
        sha = ref.get("sha256") if isinstance(ref, dict) else None
        if not (isinstance(ref, dict) and set(ref) == {"uri", "sha256", "nbytes"} and isinstance(key, str)
                and isinstance(ref["uri"], str) and ref["uri"].endswith("/" + key) and len(ref["uri"]) < 4096
                and isinstance(sha, str) and len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha)
                and isinstance(ref["nbytes"], int) and not isinstance(ref["nbytes"], bool) and ref["nbytes"] > 0):
            raise ValueError("rejected: extras.scaffold_ci is not the reference of the variate this task wrote")

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        out = server_step(updates, global_params, lambda name, g, delta: g + self.opts.server_lr * delta,
                          self.kinds_of(global_params))
        total, count, refs = self._control(updates)
        if count:
            share = count / max(self.clients, count)
            for name, v in total.items():
                self.c[name] = self.c.get(name, np.zeros_like(v)) + share * v / count
            for cl, ref in refs.items():
                if cl in self.refs:
                    self.prev[cl] = self.refs[cl]
                self.refs[cl] = dict(ref)
        return out

    @staticmethod
    def _control(updates: list[ClientUpdate]) -> tuple[Params, int, dict[int, dict[str, Any]]]:
        """The sum of the fresh clients' c_i+ - c_i, their count, and their new variates'
        references: from each client's own update, or from a site's partial (its clients' mean
        delta and their references, under round.aggregate: site)."""
        total: Params = OrderedDict()
        count, refs = 0, {}
        for u in updates:
            if u.staleness:
                continue
            if "scaffold_mean" in u.extras:
                k, delta, mine = len(u.extras["scaffold_clients"]), u.extras["scaffold_mean"], \
                    u.extras["scaffold_clients"]
            elif "scaffold_delta_c" in u.extras:
                k, delta, mine = 1, u.extras["scaffold_delta_c"], {u.client: u.extras["scaffold_ci"]}
            else:
                continue
            for name, v in delta.items():
                total[name] = total.get(name, 0.0) + k * np.asarray(v, np.float64)
            count += k
            refs.update(mine)
        return total, count, refs

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
