"""Two-tier aggregation against flat (issue 18): what crosses into the driver, its memory, s/round.

    python bench/twotier.py [--sites 4] [--clients-per-site 25] [--hidden 476000] [--rounds 3]
    python bench/twotier.py --grow      # the driver's work against clients per site: 10, 100, 1,000

A synthetic job (8 rows per client) with an mlp of about 10 M parameters (hidden 476,000: 40 MB of
float32) and `train.epochs: 0`, so what is measured is the data plane: every client returns the
global model through the store. Each mode runs in its own subprocess (its peak RSS is its own).
Per mode: bytes into the driver per round (`bytes_up`), bytes that stayed in the sites, the
driver's peak RSS, and the median seconds per round. Writes bench/results/twotier.json.

`--grow`: 2 sites of {10, 100, 1,000} clients each, a tiny mlp (hidden 64), both modes: the
driver process's CPU seconds per round (all its threads: submit, gather, checks, aggregation,
bookkeeping; not the workers') and per client. Writes bench/results/twotier_grow.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save_result  # noqa: E402 - bench/ is the script's own folder


def one(mode: str, a: argparse.Namespace, work: Path) -> dict:
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    n = a.sites * a.clients_per_site
    job = parse_job({
        "name": f"twotier-{mode}", "rounds": a.rounds, "model": {"name": "mlp", "kwargs": {"hidden": a.hidden}},
        "data": {"dataset": "synthetic", "clients": n, "samples_per_client": 8, "partition": {"kind": "iid"}},
        "train": {"epochs": 0}, "round": {"min_clients": n, "deadline_s": 3600, "eval_every": a.rounds,
                                          "aggregate": mode},
        "sites": [{"name": f"s{i}", "executor": {"kind": "htex", "workers": 1}, "clients": a.clients_per_site}
                  for i in range(a.sites)],
        "checkpoint": {"dir": str(work / mode), "keep": 1},
    })
    res = run(job, quiet=True)
    rows = res.rows
    later = rows[1:] or rows
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    from fedgrid.flow.persist import checkpoint as ckpt

    model = ckpt.read_round(ckpt.round_path(res.run_dir, 0)).params
    return {"params_M": round(sum(a.size for a in model.values()) / 1e6, 2),
            "bytes_up_MB": round(statistics.median(r["bytes_up"] for r in later) / 1e6, 1),
            "bytes_in_sites_MB": round(statistics.median(r.get("bytes_in_sites") or 0 for r in later) / 1e6, 1),
            "s_per_round": round(statistics.median(r["seconds"] for r in later), 2),
            "driver_peak_rss_MB": round(cpu.ru_maxrss / 1024, 0),
            "driver_cpu_s": round(cpu.ru_utime + cpu.ru_stime, 2)}


def _mode(mode: str, sites: int, per: int, hidden: int, rounds: int) -> dict:
    args = [sys.executable, __file__, "--mode", mode, "--sites", str(sites), "--clients-per-site", str(per),
            "--hidden", str(hidden), "--rounds", str(rounds)]
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def grow(a: argparse.Namespace) -> None:
    """Driver CPU per round against clients per site; the difference of a run of `rounds` and one
    of 1 round removes the start-up (imports, executors, warm-up) from the per-round figure."""
    out = []
    for per in (10, 100, 1000):
        row: dict = {"clients_per_site": per, "clients": 2 * per}
        for mode in ("flat", "site"):
            many, once = _mode(mode, 2, per, 64, 4), _mode(mode, 2, per, 64, 1)
            per_round = (many["driver_cpu_s"] - once["driver_cpu_s"]) / 3
            row[mode] = {"driver_cpu_s_per_round": round(per_round, 3),
                         "ms_per_client": round(1e3 * per_round / (2 * per), 3), "s_per_round": many["s_per_round"]}
        out.append(row)
        print(json.dumps(row))
    save_result("twotier_grow", out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--clients-per-site", type=int, default=25)
    ap.add_argument("--hidden", type=int, default=476_000)  # 10.0 M params on the synthetic data (20 + 1 per unit)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=["flat", "site"])
    ap.add_argument("--grow", action="store_true")
    a = ap.parse_args()
    if a.mode:  # one mode, in this process
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(one(a.mode, a, Path(d))))
        return
    if a.grow:
        return grow(a)
    out: dict = {"sites": a.sites, "clients_per_site": a.clients_per_site}
    for mode in ("flat", "site"):
        out[mode] = _mode(mode, a.sites, a.clients_per_site, a.hidden, a.rounds)
    save_result("twotier", out)


if __name__ == "__main__":
    main()
