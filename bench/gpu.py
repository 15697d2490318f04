"""GPU against CPU on the fmnist workload (issue 29): seconds per round, one and several clients per GPU.

    python bench/gpu.py [--rounds 5] [--per-gpu 1,2,4]
    python bench/gpu.py --check       # every configuration for 1 round, GPU or not; writes nothing

examples/fmnist.yaml as a user runs it (bench/run.py's ``bench_job``: ``fedgrid run`` in a
subprocess; 20 non-IID clients of Fashion-MNIST, the cnn, one epoch of batch 32 a round) on one
``htex`` site, in these configurations:

- ``cpu``: a worker per core (at most one per client), ``train.device: cpu``: the clients and the
  driver's evaluation on the CPU, as on a machine without a GPU;
- ``gpu x k`` for each k of ``--per-gpu``: every GPU of the machine (``gpus: N``) with k workers on
  each (``workers_per_gpu: k``), ``train.device: auto``: clients train on their worker's GPU and
  the driver evaluates on one.

Per configuration: the median seconds per round, the time from the command's start to the first
aggregated round (worker start, CUDA and data loading included), the last round's test accuracy,
and the speed-up of the median round against ``cpu``. Writes bench/results/gpu.json.

Where torch sees no CUDA device, or the Fashion-MNIST files are missing, it says so and exits 0
without writing anything: a machine without a GPU has no GPU number to give. ``--check`` runs
the configurations anyway, one round each (a GPU configuration then trains on the CPU: its
workers are pinned to a GPU torch cannot see), to try the script itself; it writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from common import save_result  # noqa: E402 - bench/ is the script's own folder
from run import REPO, bench_job  # noqa: E402

EXAMPLE = REPO / "examples" / "fmnist.yaml"


def gpus_here() -> tuple[int, str]:
    """CUDA devices torch sees in this environment (the one the benchmark's workers run in), and
    the first one's name; (0, why) when there are none."""
    try:
        import torch
    except ImportError:
        return 0, "torch is not installed"
    if not torch.cuda.is_available():
        return 0, f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})"
    return torch.cuda.device_count(), torch.cuda.get_device_name(0)


def data_missing() -> str | None:
    from fedgrid.apps.datasets import FMNIST_DEFAULT_ROOT, fashion_mnist_missing

    job = yaml.safe_load(EXAMPLE.read_text())
    return fashion_mnist_missing(job["data"].get("root") or FMNIST_DEFAULT_ROOT)


def configurations(gpus: int, per_gpu: list[int]) -> dict[str, tuple[dict[str, Any], str]]:
    """Each configuration's executor block and train.device, by name."""
    clients = yaml.safe_load(EXAMPLE.read_text())["data"]["clients"]
    cores = min(os.cpu_count() or 1, clients)
    out = {"cpu": ({"kind": "htex", "workers": cores}, "cpu")}
    for k in per_gpu:
        out[f"gpu x{k}"] = ({"kind": "htex", "gpus": max(gpus, 1), "workers_per_gpu": k,
                             "workers": max(gpus, 1) * k}, "auto")
    return out


def one(name: str, executor: dict[str, Any], device: str, rounds: int, work: Path) -> dict[str, Any]:
    """One configuration: the example with its train.device, its site's executor replaced."""
    job = yaml.safe_load(EXAMPLE.read_text())
    job["train"]["device"] = device
    tag = name.replace(" ", "")
    path = work / f"{tag}-job.yaml"
    path.write_text(yaml.safe_dump(job))
    r = bench_job(path, rounds, work, executor, tag)
    return {"executor": executor, "train_device": device, "workers": r["workers"],
            "median_round_s": r["median_round_s"], "first_trained_s": r["first_trained_s"],
            "round_s": r["round_s"], "accuracy": r["accuracy"][-1]}


def table(results: dict[str, dict[str, Any]]) -> str:
    base = results["cpu"]["median_round_s"]
    lines = ["| configuration | workers | median s/round | first aggregated round | accuracy | vs cpu |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['workers']} | {r['median_round_s']:.2f} | {r['first_trained_s']:.1f} s "
                     f"| {r['accuracy']:.4f} | {base / r['median_round_s']:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-gpu", default="1,2,4", help="workers per GPU to try, comma-separated")
    ap.add_argument("--check", action="store_true", help="run every configuration for 1 round, GPU or not; "
                                                         "write nothing")
    a = ap.parse_args()
    per_gpu = [int(k) for k in a.per_gpu.split(",") if k]
    if why := data_missing():
        print(f"bench/gpu.py: skipped, nothing measured or written: {why}")
        return 0
    n, what = gpus_here()
    if n == 0 and not a.check:
        print(f"bench/gpu.py: skipped, nothing measured or written: no GPU here ({what}). "
              "Run it on a machine with a CUDA GPU (or --check to try the script on this one).")
        return 0
    rounds = 1 if a.check else a.rounds
    with tempfile.TemporaryDirectory() as d:
        results = {name: one(name, ex, device, rounds, Path(d))
                   for name, (ex, device) in configurations(n, per_gpu).items()}
    print(table(results))
    if a.check:
        where = what if n == 0 else f"{n} x {what}"
        print(f"\n(--check: {rounds} round each; {where}; not a result, nothing written)")
        return 0
    save_result("gpu", {"gpus": n, "gpu": what, "cpu_cores": os.cpu_count(), "rounds": rounds,
                        "configurations": results,
                        "speedup": {k: results["cpu"]["median_round_s"] / r["median_round_s"]
                                    for k, r in results.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
