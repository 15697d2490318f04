"""Krum and multi-Krum: aggregate only the updates that sit closest to the others.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
NeurIPS 2017. With k updates of which at most ``byzantine`` (f) are bad, each update's score is
the sum of squared distances to its ``k - f - 2`` nearest neighbours; honest updates cluster, so
the bad ones score high. Krum keeps the single best-scoring update; multi-Krum (``keep`` > 1;
by default ``k - f``) averages the best ``keep`` of them, weighted by examples. Distances come from
one Gram matrix of the flattened updates, accumulated tensor by tensor. With ``bucket`` s the
rule scores k/s bucket means (flow/strategies/robust.py); ``byzantine`` then counts bad buckets.
Only trained weights enter the distances; statistics buffers (BatchNorm's) are the coordinate-wise
median of the clients' (apps/kinds.py): a client Krum keeps for its weights could still send
poisoned statistics.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from fedgrid.apps.kinds import WEIGHT, buffers
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.strategies.base import Params, weighted_mean
from fedgrid.flow.strategies.median import Median
from fedgrid.flow.strategies.robust import RobustOptions, RobustStrategy

log = logging.getLogger("fedgrid")


class KrumOptions(RobustOptions):
    name: Literal["krum", "multikrum"] = "krum"
    byzantine: Annotated[int, Field(ge=0)] = 1  # f: how many bad updates a round may hold
    keep: Annotated[int, Field(ge=1)] | None = None  # updates averaged (krum: 1; multikrum: k - f)


class Krum(RobustStrategy):
    name = "krum"
    Options = KrumOptions
    opts: KrumOptions

    @classmethod
    def advice(cls, job: Any) -> list[tuple[str, str]]:
        o = job.strategy
        if o.name != "krum" or (o.keep or 1) > 1:
            return []
        return [("strategy.name", "krum keeps one client's update a round, so each round's model learns from one "
                 "client's data: expect less accuracy than fedavg (12 points less on the quickstart, BENCHMARKS.md); "
                 "multikrum averages the k - f most central updates with the same defence (as fedavg there)")]

    def scores(self, global_params: Params, updates: list[ClientUpdate]) -> np.ndarray:
        k, f = len(updates), self.opts.byzantine
        gram = np.zeros((k, k))
        kinds = self.kinds_of(global_params)
        for name, g in global_params.items():
            if kinds[name] != WEIGHT:
                continue  # statistics and counters are not what Krum compares (module docstring)
            flat = np.stack([np.asarray(u.params[name], np.float64).ravel() - np.asarray(g, np.float64).ravel()
                             for u in updates])
            gram += flat @ flat.T
        sq = np.diag(gram)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)
        near = max(1, k - f - 2)
        return np.array([np.sort(np.delete(dist[i], i))[:near].sum() for i in range(k)])

    def combine(self, rnd: int, global_params: Params, updates: list[ClientUpdate]) -> Params:
        if len(updates) < 2 * self.opts.byzantine + 3:
            # Krum's guarantee needs k > 2f + 2; with fewer updates fall back to the coordinate-wise
            # median, which still resists a minority of bad updates (the mean would not)
            log.warning("round %d: %d updates are too few for krum with byzantine=%d; using the median",
                        rnd, len(updates), self.opts.byzantine)
            return Median().combine(rnd, global_params, updates)
        keep = self.opts.keep or (1 if self.opts.name == "krum" else len(updates) - self.opts.byzantine)
        best = np.argsort(self.scores(global_params, updates), kind="stable")[:max(1, min(keep, len(updates)))]
        out = weighted_mean([updates[i] for i in sorted(best)], global_params)
        if names := buffers(self.kinds_of(global_params)):
            out.update(Median().combine(rnd, OrderedDict((n, global_params[n]) for n in names), updates))
        return out

