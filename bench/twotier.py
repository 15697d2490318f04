"""Two-tier aggregation against flat (issue 18): what crosses into the driver, its memory, s/round.

    python bench/twotier.py [--sites 4] [--clients-per-site 25] [--hidden 135000] [--rounds 3]

A synthetic job (8 rows per client) with an mlp of about 10 M parameters (hidden 476,000: 40 MB of
float32) and `train.epochs: 0`, so what is measured is the data plane: every client returns the
global model through the store. Each mode runs in its own subprocess (its peak RSS is its own).
Per mode: bytes into the driver per round (`bytes_up`), bytes that stayed in the sites, the
driver's peak RSS, and the median seconds per round. Writes bench/results/twotier.json.
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

REPO = Path(__file__).resolve().parents[1]


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
    from fedgrid.flow.persist import checkpoint as ckpt

    model = ckpt.read_round(ckpt.round_path(res.run_dir, 0)).params
    return {"params_M": round(sum(a.size for a in model.values()) / 1e6, 2),
            "bytes_up_MB": round(statistics.median(r["bytes_up"] for r in later) / 1e6, 1),
            "bytes_in_sites_MB": round(statistics.median(r.get("bytes_in_sites") or 0 for r in later) / 1e6, 1),
            "s_per_round": round(statistics.median(r["seconds"] for r in later), 2),
            "driver_peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--clients-per-site", type=int, default=25)
    ap.add_argument("--hidden", type=int, default=476_000)  # 10.0 M params on the synthetic data (20 + 1 per unit)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=["flat", "site"])
    a = ap.parse_args()
    if a.mode:  # one mode, in this process
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(one(a.mode, a, Path(d))))
        return
    out: dict = {"sites": a.sites, "clients_per_site": a.clients_per_site}
    for mode in ("flat", "site"):
        args = [sys.executable, __file__, "--mode", mode, "--sites", str(a.sites), "--clients-per-site",
                str(a.clients_per_site), "--hidden", str(a.hidden), "--rounds", str(a.rounds)]
        res = subprocess.run(args, capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "twotier.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
