"""fedgrid's `examples/fmnist.yaml` workload run with Flower's simulation engine (Ray backend), for comparison.

    python bench/flower_fmnist.py               # 10 rounds -> bench/results/flower.json
    python bench/flower_fmnist.py --rounds 2    # shorter

Why: to say how fedgrid compares with the usual way of simulating federated learning on one machine, both
frameworks must run the same work. So the clients here train exactly like fedgrid's train app
(`apps/train.py`): the same CNN, the same initial global model (built on the server after
``torch.manual_seed(job.seed)``, as fedgrid's driver does), the same Dirichlet shards
(`fedgrid.apps.datasets.client_arrays`), plain SGD with the job's lr, batch size and epochs, one torch thread,
and the same shuffle order per (seed, round, client). The server runs Flower's FedAvg over all 20 clients every
round (example-weighted) and evaluates the global model centrally after each round with fedgrid's `evaluate`.
Each Flower client gets 1 CPU, so on a 2-core machine at most 2 train at once, like fedgrid's 2 workers.

Measured: time from the start (of the process, or of the `run_flower` call) to the end of round 1 (its central
evaluation included), per-round wall times (end of one round's evaluation to the next's; the first is measured
from when the strategy starts), total wall time (Ray's shutdown included), peak resident memory of this process
plus all its descendants (Ray's GCS, raylet, agents and workers), sampled every 0.2 s, and test accuracy per round.

API: ``flwr.simulation.run_simulation`` with a ``ServerApp`` running ``flwr.serverapp.strategy.FedAvg.start`` and
a ``ClientApp`` (Flower's Message API). Flower and Ray are imported inside `run_flower` so their import time counts
when another script imports this one (``sys.path.insert(0, "bench"); from flower_fmnist import run_flower``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "flower.json"


def train_local(data: dict[str, Any], mspec: dict[str, Any], tr: dict[str, Any], seed: int, clients: int,
                client: int, rnd: int, start: dict[str, np.ndarray]) -> tuple[OrderedDict[str, np.ndarray], int, float]:
    """One client's local training, step for step as fedgrid's `train_client` does it; (params, examples, loss)."""
    import torch

    from fedgrid.apps.datasets import client_arrays
    from fedgrid.apps.models import build, get_params, set_params

    torch.set_num_threads(tr["threads"])
    arr = client_arrays(data, client, clients, seed)  # pool and split cached per worker process
    x = torch.from_numpy(np.require(arr.x, requirements=["C", "W"]))
    y = torch.from_numpy(np.require(arr.y, requirements=["W"]))
    model = build(mspec["name"], tuple(mspec["input_shape"]), mspec["num_classes"], mspec["kwargs"])
    set_params(model, start)
    ss = np.random.SeedSequence([seed, rnd, client])
    gen = torch.Generator().manual_seed(int(ss.generate_state(1)[0]))
    opt = torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr["momentum"], weight_decay=tr["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    n, bs, total = len(y), tr["batch_size"], 0.0
    for _ in range(tr["epochs"]):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
    return get_params(model), n, total / max(n * tr["epochs"], 1)


class PeakRSS(threading.Thread):
    """Samples the resident memory of this process and all its descendants every `every` seconds; keeps the peak."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.peak, self._stop_event = every, 0, threading.Event()

    def sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # exited between listing and reading
                total += p.memory_info().rss
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop_event.wait(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def load_job() -> Any:
    import yaml

    from fedgrid.flow.config import parse_job

    return parse_job(yaml.safe_load((REPO / "examples" / "fmnist.yaml").read_text()))


def run_flower(rounds: int = 10, t0: float | None = None, cpus: int | None = None) -> dict[str, Any]:
    """Run the fmnist workload under Flower for `rounds` rounds; timings count from `t0` (epoch s, default now)."""
    t0 = time.time() if t0 is None else t0
    mem = PeakRSS()
    mem.start()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read when flwr is imported: no phoning home offline
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning; CPU only here
    import logging

    import flwr
    import ray
    import torch
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedgrid.apps import datasets
    from fedgrid.apps.evaluate import evaluate
    from fedgrid.apps.models import build, get_params

    # Flower logs every round at INFO, and warns that run_simulation is deprecated (for `flwr run`)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    # when imported as a module (not run as a script), Ray workers unpickle the apps by importing it by name
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))

    job = load_job()
    data, seed, clients = job.data.model_dump(), job.seed, job.data.clients
    tr = job.train.model_dump()
    # the server side, as fedgrid's driver sets it up (flow/rounds/runner.py, _run_locked)
    torch.set_num_threads(1)
    test = datasets.load_test(data, seed)
    shape, num_classes = datasets.meta(data, test)
    mspec = {"name": job.model.name, "input_shape": list(shape), "num_classes": num_classes,
             "kwargs": job.model.kwargs}
    torch.manual_seed(seed)
    model = build(job.model.name, shape, num_classes, job.model.kwargs)
    initial = get_params(model)

    def record(params: dict[str, np.ndarray]) -> ArrayRecord:
        return ArrayRecord({k: Array(v) for k, v in params.items()})

    def arrays(rec: ArrayRecord) -> OrderedDict[str, np.ndarray]:
        return OrderedDict((k, a.numpy()) for k, a in rec.items())

    client_app = ClientApp()

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        client = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        params, n, loss = train_local(data, mspec, tr, seed, clients, client, rnd, arrays(msg.content["arrays"]))
        metrics = MetricRecord({"num-examples": n, "train_loss": loss})
        return Message(RecordDict({"arrays": record(params), "metrics": metrics}), reply_to=msg)

    marks: list[float] = []  # when each round's central evaluation ended (marks[0]: the strategy started)
    accuracy: list[float] = []
    losses: list[float] = []
    eval_s: list[float] = []

    def central(rnd: int, rec: ArrayRecord) -> MetricRecord | None:
        if rnd == 0:  # fedgrid evaluates no round 0: only mark the start
            marks.append(time.time())
            return None
        e0 = time.perf_counter()
        m = evaluate(model, arrays(rec), test)
        eval_s.append(time.perf_counter() - e0)
        accuracy.append(m["accuracy"])
        losses.append(m["loss"])
        marks.append(time.time())
        return MetricRecord({"accuracy": m["accuracy"], "loss": m["loss"]})

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                          min_available_nodes=clients)
        strategy.start(grid=grid, initial_arrays=record(initial), num_rounds=rounds, evaluate_fn=central)

    cpus = cpus or os.cpu_count() or 1
    ray_tmp = tempfile.mkdtemp(prefix="flwr-ray-")  # short: Ray's socket paths must stay under 108 bytes
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "include_dashboard": False, "_temp_dir": ray_tmp,
                             "logging_level": logging.ERROR, "log_to_driver": False}}
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                       backend_name="ray", backend_config=backend)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    total = time.time() - t0
    peak = mem.stop()
    if len(accuracy) != rounds:
        raise RuntimeError(f"Flower finished {len(accuracy)} of {rounds} rounds")
    round_s = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "flwr_version": flwr.__version__,
            "ray_version": ray.__version__, "rounds": rounds, "cpus": cpus, "first_round_s": marks[1] - t0,
            "median_round_s": statistics.median(round_s), "total_s": total, "peak_rss_mb": peak / 2**20,
            "accuracy": accuracy, "round_s": round_s, "test_loss": losses, "eval_s": eval_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    import psutil

    res = run_flower(args.rounds, t0=psutil.Process().create_time())  # from the process start, like bench/run.py
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"flower {res['flwr_version']} (ray {res['ray_version']}): {res['rounds']} rounds, "
          f"first round {res['first_round_s']:.1f} s, median {res['median_round_s']:.2f} s/round, "
          f"total {res['total_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB, "
          f"accuracy {' '.join(f'{a:.4f}' for a in res['accuracy'])} -> {args.out}")


if __name__ == "__main__":
    main()
