"""Partitioners: how a pooled dataset is split into federated clients.

Each returns one index array per client; together they hold every sample exactly once. They are
deterministic in (labels, clients, spec, seed), so every site computes the same split on its own and
reads only its clients' rows: no index lists travel from the driver.

- ``iid``: a seeded shuffle cut into near-equal parts.
- ``dirichlet``: per class, proportions over clients drawn from Dir(alpha) (Hsu et al. 2019,
  "Measuring the effects of non-identical data distribution"); small alpha means few classes per
  client. Redrawn (bounded) until every client has ``min_size`` samples.
- ``shards``: sort by label, cut into clients x k shards, deal k to each client (McMahan et al. 2017).
- ``natural``: one client per distinct value of a column (e.g. writer, hospital), dealt round-robin
  when there are more groups than clients.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def partition(labels: np.ndarray, clients: int, spec: dict[str, Any], seed: int,
              groups: np.ndarray | None = None) -> list[np.ndarray]:
    kind = spec.get("kind", "iid")
    n = len(labels)
    if clients > n:
        raise ValueError(f"cannot split {n} samples into {clients} clients")
    if kind in ("iid", "none"):
        return iid(n, clients, seed)
    if kind == "dirichlet":
        return dirichlet(labels, clients, float(spec.get("alpha", 0.5)), seed, int(spec.get("min_size", 2)))
    if kind == "shards":
        return shards(labels, clients, int(spec.get("shards_per_client", 2)), seed)
    if kind == "natural":
        if groups is None:
            raise ValueError("partition 'natural' needs a group column")
        return natural(groups, clients, seed)
    raise ValueError(f"unknown partition kind {kind!r}")


def iid(n: int, clients: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, clients)]


def dirichlet(labels: np.ndarray, clients: int, alpha: float, seed: int, min_size: int = 2,
              max_tries: int = 1000) -> list[np.ndarray]:
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    min_size = min(min_size, len(labels) // clients)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            props = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(o) for o in out) >= min_size:
            return out
    raise ValueError(f"dirichlet(alpha={alpha}) could not give each of {clients} clients {min_size} "
                     f"samples in {max_tries} draws; raise alpha or lower partition.min_size")


def shards(labels: np.ndarray, clients: int, per_client: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, clients * per_client)
    deal = rng.permutation(len(pieces))
    return [np.sort(np.concatenate([pieces[j] for j in deal[c::clients]])) for c in range(clients)]


def natural(groups: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
    values = np.unique(groups)
    if len(values) < clients:
        raise ValueError(f"column has {len(values)} distinct value(s), fewer than {clients} clients")
    order = np.random.default_rng(seed).permutation(len(values))
    owner = np.empty(len(values), dtype=np.int64)
    owner[order] = np.arange(len(values)) % clients
    assign = owner[np.searchsorted(values, groups)]
    return [np.flatnonzero(assign == c) for c in range(clients)]
