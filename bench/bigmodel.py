"""A 250 M-parameter model (1 GB of float32) through the store with 8 clients (issue 18).

    python bench/bigmodel.py [--params 250_000_000] [--clients 8] [--rounds 2] [--paths fold,old]
    python bench/bigmodel.py --kernel      # the aggregation kernel alone, against a memory copy

A job's own client (`Big`, below: numpy only, so the driver holds no torch model) whose
`init_params` is a few large float32 tensors and an integer counter, and whose `train` returns the
global params plus a small client-specific step: what is measured is the data plane and the
aggregation. 8 clients on HTEX (2 workers), by reference through the run's store, in both modes:
flat (`round.aggregate: flat`, one site) and two-tier (`site`, two sites of 4 clients, 1 worker
each). Each (mode, path) runs in its own subprocess, one at a time: `fold` is the streaming fold
(flow/rounds/fold.py), `old` keeps every update (fold.applies patched to False). Per run: the
driver's peak RSS (the sites' memory is not measured: in site mode a worker also runs the site
aggregator, whose float64 total is 2 GB), the median round seconds, the aggregation step
(`aggregate_s`), the time the driver spent reading and verifying updates (spill or fetch) and
folding them, and a plain copy (np.copyto) of the same bytes as all the round's updates.

`--kernel`: `Sum.add` of 8 in-memory 1 GB updates (one array folded 8 times with different
weights: the same memory traffic without 8 GB resident) against np.copyto of the same bytes, and
the old kernel (weighted_mean over 8 updates). Writes bench/results/bigmodel.json
(bigmodel_kernel.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from fedgrid.client import Client, Fit

HERE = Path(__file__).resolve().parent
TENSORS = 4  # a few large tensors, as a big model's embedding and projection matrices


class Big(Client):
    """The synthetic 250 M-parameter model: no data, no torch."""

    def init_params(self) -> OrderedDict[str, np.ndarray]:
        n = int(self.ctx.options.get("params", 250_000_000))
        rng = np.random.default_rng(0)
        out = OrderedDict((f"t{i}", rng.standard_normal(n // TENSORS, dtype=np.float32) * np.float32(0.05))
                          for i in range(TENSORS))
        out["count"] = np.array(7, np.int64)
        return out

    def train(self, params, work) -> Fit:  # noqa: ANN001 - the client API
        step = np.float32(1e-3 * (self.ctx.client + 1))
        new = OrderedDict((k, v + step if v.dtype.kind == "f" else v + 1) for k, v in params.items())
        return Fit(new, num_examples=8 + self.ctx.client)


def _timed(obj: object, name: str, spent: dict) -> None:
    """Wrap obj.name so its seconds add up in spent[name]."""
    orig = getattr(obj, name)

    def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

    setattr(obj, name, wrapper)


def one(mode: str, path: str, a: argparse.Namespace, work: Path) -> dict:
    from fedgrid.apps import update
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds import fold, twotier
    from fedgrid.flow.rounds.runner import run

    spent: dict = {}
    if path == "old":
        fold.applies = lambda drv: False  # noqa: ARG005 - every update kept, then weighted_mean
    _timed(fold.Sum, "add", spent)
    _timed(fold.Spill, "__init__", spent)
    for mod in (update, twotier):  # (where the old path's whole reads are called)
        _timed(mod, "fetch", spent)
    half = a.clients // 2
    sites = ([{"name": "s0", "executor": {"kind": "htex", "workers": 2}, "clients": a.clients}] if mode == "flat" else
             [{"name": f"s{i}", "executor": {"kind": "htex", "workers": 1}, "clients": half} for i in range(2)])
    job = parse_job({
        "name": f"big-{mode}-{path}", "rounds": a.rounds, "client": {"path": "bigmodel:Big",
                                                                      "options": {"params": a.params}},
        "data": {"dataset": "custom", "clients": a.clients}, "train": {"epochs": 0},
        "round": {"min_clients": a.clients, "deadline_s": 3600, "aggregate": mode},
        "store": {"mode": "always"}, "sites": sites, "checkpoint": {"dir": str(work / "run"), "keep": 1},
    })
    res = run(job, quiet=True)
    rows = res.rows
    later = rows[1:] or rows
    nbytes = a.params * 4
    return {"mode": mode, "path": path, "params_M": a.params / 1e6, "clients": a.clients,
            "driver_peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "s_per_round": round(statistics.median(r["seconds"] for r in later), 2),
            "aggregate_s": round(statistics.median(r["aggregate_s"] for r in later), 3),
            "read_verify_s_per_round": round((spent.get("__init__", 0) + spent.get("fetch", 0)) / a.rounds, 2),
            "fold_s_per_round": round(spent.get("add", 0) / a.rounds, 2),
            "copy_s_same_bytes": round(_copy_seconds(nbytes, a.clients if mode == "flat" else 2), 3)}


def _copy_seconds(nbytes: int, times: int) -> float:
    """np.copyto of `times` x `nbytes` (best of 3): the bytes the round's aggregation consumes."""
    src, dst = np.ones(nbytes // 4, np.float32), np.zeros(nbytes // 4, np.float32)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(times):
            np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return best


def kernel(a: argparse.Namespace) -> dict:
    """Fold of 8 in-memory updates, memcpy of the same bytes, and the old weighted_mean."""
    from fedgrid.apps.update import ClientUpdate
    from fedgrid.flow.rounds.fold import Sum
    from fedgrid.flow.strategies.base import weighted_mean

    n = a.params // TENSORS
    rng = np.random.default_rng(0)
    like = OrderedDict((f"t{i}", rng.standard_normal(n, dtype=np.float32)) for i in range(TENSORS))
    upd = OrderedDict((k, v + np.float32(1e-3)) for k, v in like.items())
    nbytes = a.clients * a.params * 4
    out: dict = {"updates": a.clients, "GB": nbytes / 1e9}
    folds = []
    for _ in range(3):
        s = Sum(like)
        t0 = time.perf_counter()
        for c in range(a.clients):
            s.add(((k, 0, v) for k, v in upd.items()), float(8 + c), 8 + c)
        s.mean(1)
        folds.append(time.perf_counter() - t0)
        del s
    out["fold_s"] = round(min(folds), 3)
    out["copy_s"] = round(_copy_seconds(a.params * 4, a.clients), 3)
    ups = [ClientUpdate(client=c, site="s", round=1, num_examples=8 + c, params=upd) for c in range(a.clients)]
    t0 = time.perf_counter()
    weighted_mean(ups, like)
    out["weighted_mean_s"] = round(time.perf_counter() - t0, 3)
    out["fold_GBps"] = round(nbytes / out["fold_s"] / 1e9, 2)
    out["copy_GBps"] = round(nbytes / out["copy_s"] / 1e9, 2)
    out["ratio_fold_to_copy"] = round(out["copy_s"] / out["fold_s"], 2)
    out["ratio_weighted_mean_to_copy"] = round(out["copy_s"] / out["weighted_mean_s"], 2)
    return out


def _sub(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=250_000_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--paths", default="fold,old")
    ap.add_argument("--modes", default="flat,site")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "PATH"))
    ap.add_argument("--kernel", action="store_true")
    a = ap.parse_args()
    common = ["--params", str(a.params), "--clients", str(a.clients), "--rounds", str(a.rounds)]
    if a.one:  # one (mode, path), in this process; its run directory is removed afterwards
        work = Path(tempfile.mkdtemp(prefix="fedgrid-big-"))
        try:
            print(json.dumps(one(*a.one, a, work)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    from common import save_result  # noqa: E402 - bench/ is the script's own folder

    if a.kernel:
        return save_result("bigmodel_kernel", kernel(a))

    out = [_sub(["--one", mode, path, *common]) for mode in a.modes.split(",") for path in a.paths.split(",")]
    save_result("bigmodel", out)


if __name__ == "__main__":
    main()
