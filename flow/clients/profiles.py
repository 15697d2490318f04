"""Per-client profiles the scheduler learns from: examples, speed, reliability.

Kept as arrays indexed by client id so they checkpoint to Arrow with the model and come back on
resume. Speeds are exponential moving averages, so a site that slows down is noticed within a few
rounds without forgetting its history at once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.rounds.gather import Gathered

log = logging.getLogger("fedgrid")

EMA = 0.3
FIELDS = ("examples", "samples_per_s", "train_s", "queue_s", "rounds_ok", "rounds_failed", "last_round",
          "last_selected")


def empty(clients: int) -> OrderedDict[str, np.ndarray]:
    out = OrderedDict((f, np.zeros(clients, dtype=np.float64)) for f in FIELDS)
    out["samples_per_s"][:] = np.nan
    out["train_s"][:] = np.nan
    out["queue_s"][:] = np.nan
    return out


def compatible(p: dict[str, np.ndarray], clients: int) -> bool:
    return set(FIELDS) <= set(p) and all(len(p[f]) == clients for f in FIELDS)


def _ema(arr: np.ndarray, i: int, value: float) -> None:
    arr[i] = value if np.isnan(arr[i]) else (1 - EMA) * arr[i] + EMA * value


def observe(p: dict[str, np.ndarray], u: ClientUpdate) -> None:
    """Learn a client's speed from one answer (also from a late one that missed its round)."""
    c = u.client
    p["examples"][c] = u.num_examples
    _ema(p["samples_per_s"], c, u.timings.get("samples_per_s", np.nan))
    _ema(p["train_s"], c, u.timings.get("train", np.nan))
    _ema(p["queue_s"], c, u.timings.get("queue", np.nan))


def keep_state(p: dict[str, np.ndarray], u: ClientUpdate) -> None:
    """An accepted update's client state becomes the client's version; the one before stays named
    too (a checkpoint still being written may refer to it). Only accepted updates come here: an
    attempt that failed, was dropped as late or was rejected never becomes a client's state."""
    ref = u.extras.get("state")
    if not isinstance(ref, dict):
        return
    if "state_nbytes" not in p:
        n = len(p["examples"])
        for tag in ("state", "state_prev"):
            p[f"{tag}_sha256"], p[f"{tag}_nbytes"] = np.zeros((n, 32), np.uint8), np.zeros(n, np.int64)
    c = u.client
    sha = np.frombuffer(bytes.fromhex(ref["sha256"]), np.uint8)
    if p["state_nbytes"][c] and not np.array_equal(p["state_sha256"][c], sha):
        p["state_prev_sha256"][c], p["state_prev_nbytes"][c] = p["state_sha256"][c], p["state_nbytes"][c]
    p["state_sha256"][c], p["state_nbytes"][c] = sha, ref["nbytes"]


def state_of(p: dict[str, np.ndarray], c: int) -> tuple[dict | None, list[str]]:
    """Client c's state version ({sha256, nbytes}, None before its first accepted update) and the
    digests of the versions its site must keep (this one and the one before)."""
    if "state_nbytes" not in p or not p["state_nbytes"][c]:
        return None, []
    have = {"sha256": p["state_sha256"][c].tobytes().hex(), "nbytes": int(p["state_nbytes"][c])}
    keep = [have["sha256"]] + ([p["state_prev_sha256"][c].tobytes().hex()] if p["state_prev_nbytes"][c] else [])
    return have, keep


def answered(p: dict[str, np.ndarray], rnd: int, client: int) -> None:
    """Count a usable answer toward the client's reliability."""
    p["rounds_ok"][client] += 1
    p["last_round"][client] = rnd


def failed(p: dict[str, np.ndarray], client: int) -> None:
    p["rounds_failed"][client] += 1


def update(p: dict[str, np.ndarray], rnd: int, g: Gathered) -> None:
    for u in g.updates:
        if u.staleness:  # a carried update was observed when it arrived
            continue
        observe(p, u)
        answered(p, rnd, u.client)
    for f in g.failures:
        failed(p, f.client)


def reliability(p: dict[str, np.ndarray], clients: list[int]) -> np.ndarray:
    """Chance a client answers, from its record, Laplace-smoothed so a new client counts as likely."""
    ok, bad = p["rounds_ok"][clients], p["rounds_failed"][clients]
    return (ok + 2.0) / (ok + bad + 3.0)


def longest_first(p: dict[str, np.ndarray], clients: list[int]) -> list[int]:
    """Submission order: clients expected to train longest go first (LPT scheduling).

    Workers pull tasks in submission order, so starting the long ones first keeps a worker from
    picking up a big shard last while the others sit idle. Clients never seen (no timing yet) go
    first of all, since they may be the longest; ties keep client order.
    """
    t = p["train_s"][clients]
    key = np.where(np.isnan(t), np.inf, t)
    return [clients[i] for i in np.argsort(-key, kind="stable")]
