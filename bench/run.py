"""fedgrid benchmarks (never run by `make test`). Results print as Markdown to paste in BENCHMARKS.md.

    python bench/run.py                 # fmnist round throughput + compute floor
    python bench/run.py --rounds 3      # shorter

1. **fmnist**: `fedgrid run examples/fmnist.yaml --fresh` as a user runs it, in a subprocess.
   Reports the time from the command's start until round 1 is checkpointed, median seconds per
   round, and test accuracy per round (from rounds.parquet).
2. **floor**: the same local training with no framework: every client's shard trained once, in
   this process, one thread, the same model, batch size and optimiser; divided by the worker count
   it is the least a round can take on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def bench_fmnist(rounds: int, workdir: Path, executor: dict | None = None, tag: str = "fmnist") -> dict:
    """The fmnist example as a user runs it; `executor` replaces its site's executor block."""
    return bench_job(REPO / "examples" / "fmnist.yaml", rounds, workdir, executor, tag)


def bench_job(example: Path, rounds: int, workdir: Path, executor: dict | None = None, tag: str = "job",
              accuracy: str = "test_accuracy") -> dict:
    """`fedgrid run` of a job file as a user runs it, in a subprocess, timed from its start: until
    round 1 is checkpointed and until its training ended, seconds per round (the row's, and from
    one round's end to the next: what federated evaluation adds), and `accuracy` per round."""
    job = yaml.safe_load(example.read_text())
    job["rounds"] = rounds
    job["checkpoint"]["dir"] = str(workdir / tag)
    if executor:
        job["sites"][0]["executor"] = executor
    if job.get("client", {}).get("python_path"):  # relative to the example's folder, wherever the copy is
        job["client"]["python_path"] = [str((example.parent / d).resolve()) for d in job["client"]["python_path"]]
    path = workdir / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(job))
    first = workdir / tag / "rounds" / "round-000001.arrow"
    t0, wall0 = time.perf_counter(), time.time()
    proc = subprocess.Popen([sys.executable, "-m", "fedgrid.flow.commands.cli", "run", str(path), "--fresh", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_first = None
    while proc.poll() is None:
        if t_first is None and first.exists():
            t_first = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fedgrid run failed: {proc.stderr.read()}")
    import pyarrow.parquet as pq

    rows = pq.read_table(workdir / tag / "rounds.parquet").to_pylist()
    ends = [r["started_at"] + r["seconds"] for r in rows]
    return {"first_round_s": t_first, "total_s": total, "first_trained_s": ends[0] - wall0,
            "median_round_s": statistics.median(r["seconds"] for r in rows),
            # per round: its seconds, and the clients' training seconds summed (work for the workers)
            "round_s": [r["seconds"] for r in rows],
            "end_to_end_s": [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)],
            "train_sum_s": [sum(u["train_s"] for u in r["updates"]) for r in rows],
            "accuracy": [r[accuracy] for r in rows],
            "workers": sum(s["executor"]["workers"] for s in job["sites"])}


def floor_tasks() -> list:
    """Round-1 train tasks of the fmnist example for every client, with each shard loaded and cached."""
    from fedgrid.apps import datasets
    from fedgrid.apps.builtin import PATH
    from fedgrid.apps.models import build, get_params
    from fedgrid.apps.task import TrainTask, client_code, model_spec
    from fedgrid.flow.config import load_job

    job = load_job(REPO / "examples" / "fmnist.yaml")
    import torch

    torch.set_num_threads(1)
    data = job.data.model_dump()
    shape, classes = datasets.meta(data, None)
    torch.manual_seed(0)
    params = get_params(build(job.model.name, shape, classes, job.model.kwargs))
    code = client_code(PATH, {"model": model_spec(job.model.name, shape, classes, job.model.kwargs)})
    tasks = [TrainTask(client=c, site="x", round=1, clients=job.data.clients, seed=job.seed, data=data, code=code,
                       train=job.train.model_dump(), params=params, submitted_at=time.time())
             for c in range(job.data.clients)]
    for t in tasks:  # load and cache every shard first: the floor is training only
        datasets.client_arrays(data, t.client, job.data.clients, job.seed)
    return tasks


def bench_floor() -> dict:
    """Train every client's shard once in this process, as the train app would, minus the framework."""
    from fedgrid.apps.train import train_client

    tasks = floor_tasks()
    train_client(tasks[0])
    t0 = time.perf_counter()
    n = sum(train_client(t).num_examples for t in tasks)
    return {"train_all_s": time.perf_counter() - t0, "samples": n, "eval_s": bench_central_eval()}


def bench_central_eval() -> float:
    """Seconds of one central evaluation on one thread, as the driver runs it after every round
    (the fmnist example's test set, its model): CPU a round needs besides training, on the same
    cores, so the floor "with evaluation" adds it before dividing by the workers."""
    import torch

    from fedgrid.flow.config import load_job
    from fedgrid.flow.rounds.prepare import build_model

    torch.set_num_threads(1)
    parts = build_model(load_job(REPO / "examples" / "fmnist.yaml"))
    evaluate = parts.evaluator()
    assert evaluate is not None, "the fmnist example evaluates centrally"
    evaluate(parts.params)  # first call: moves the model and loads the test set
    t0 = time.perf_counter()
    evaluate(parts.params)
    return time.perf_counter() - t0


def _floor_process(group: list[int], barrier, out) -> None:  # noqa: ANN001 - multiprocessing objects
    from fedgrid.apps.train import train_client

    tasks = floor_tasks()
    train_client(tasks[0])
    barrier.wait()
    t0 = time.time()
    for c in group:
        train_client(tasks[c])
    out.put((t0, time.time()))


def bench_floor_parallel(workers: int) -> dict:
    """The same training split over `workers` processes at once (longest shards first, each to the
    least-loaded process), no framework: what the hardware gives when its cores train together,
    as against the one-process floor divided by the worker count, which assumes they scale perfectly."""
    import multiprocessing as mp

    from fedgrid.apps import datasets

    tasks = floor_tasks()
    sizes = {t.client: len(datasets.client_arrays(t.data, t.client, t.clients, t.seed).y)
             for t in tasks}
    groups: list[list[int]] = [[] for _ in range(workers)]
    load = [0] * workers
    for c in sorted(sizes, key=lambda c: -sizes[c]):
        i = load.index(min(load))
        groups[i].append(c)
        load[i] += sizes[c]
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_floor_process, args=(g, barrier, out)) for g in groups]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return {"round_s": max(e for _, e in spans) - min(s for s, _ in spans), "workers": workers,
            "samples_per_worker": load}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        fm = bench_fmnist(args.rounds, Path(d))
    floor = bench_floor()
    per_round_floor = floor["train_all_s"] / fm["workers"]
    print("| metric | value |\n|---|---|")
    print(f"| time to first finished round (command start to round-1 checkpoint) | {fm['first_round_s']:.1f} s |")
    print(f"| time to first aggregated round (command start to round-1 global model) | {fm['first_trained_s']:.1f} s |")
    print(f"| median seconds per round | {fm['median_round_s']:.2f} s |")
    print(f"| total wall time, {args.rounds} rounds | {fm['total_s']:.1f} s |")
    print(f"| compute floor: {floor['samples']} samples trained once, 1 thread | {floor['train_all_s']:.2f} s |")
    print(f"| floor per round with {fm['workers']} workers | {per_round_floor:.2f} s |")
    print(f"| fedgrid round / floor | {fm['median_round_s'] / per_round_floor:.2f}x |")
    print(f"| test accuracy per round | {', '.join(f'{a:.4f}' for a in fm['accuracy'])} |")


if __name__ == "__main__":
    main()
