"""Round overhead at scale (issues 6, 18): what fedgrid itself costs per client, with training removed.

    python bench/overhead.py [--clients 10,100,1000,5000] [--rounds 4] [--floor]
    python bench/overhead.py --clients 1000,5000,10000 --floor     # issue 18's sizes

Each size runs in its own subprocess (so the driver's peak memory is its own): a synthetic job
(`dataset: synthetic`, 8 rows per client, an mlp of ~1.3k params) with `train.epochs: 0` — every
task is a real train app on a real HTEX site of 2 workers that loads its client's rows and
returns the global model without a step. All clients every round. Reports the median seconds per
round after the first, milliseconds per client of wall time and of the driver process's CPU
(all its threads: fedgrid's and Parsl's own, which run in the driver), the CPU of the
interchange and of the two workers (on a 2-core machine they compete with the driver), and the
driver's peak RSS. Target: <= 1.5 ms per client at 5,000 and 10,000 clients a round.

`--floor` also measures Parsl's own floor on the same kind of site: a bare `python_app` that
returns the model it is sent, submitted once per client with a real TrainTask of the job,
gathered with `as_completed` — what any Parsl program pays per task here, whatever fedgrid
does — plainly (`parsl_floor`: dill, the DataFlowKernel's log at INFO) and with fedgrid's cuts to
Parsl's share (`parsl_floor_tuned`: C-pickled argument and result, that log at WARNING).

Writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import flower_offline, save_result, simulate  # noqa: E402 - bench/ is not a package

MODEL = {"name": "mlp", "kwargs": {"hidden": 64}}


def job_for(clients: int, rounds: int, work: Path, fraction: float = 1.0) -> Any:
    from fedgrid.flow.config import parse_job

    return parse_job({
        "name": f"overhead{clients}", "rounds": rounds, "model": MODEL,
        "data": {"dataset": "synthetic", "clients": clients, "samples_per_client": 8, "partition": {"kind": "iid"}},
        "train": {"epochs": 0}, "round": {"min_clients": max(1, int(clients * fraction)), "fraction": fraction,
                                          "deadline_s": 3600, "eval_every": rounds},
        "sites": [{"name": "htex", "executor": {"kind": "htex", "workers": 2}, "clients": clients}],
        "checkpoint": {"dir": str(work / str(clients))},
    })


class CpuClock:
    """CPU seconds of the driver process, of the interchange (its child) and of the site's worker
    pool (started by the provider, so not a child: found by the run directory on its command
    line), read while they run; RUSAGE_CHILDREN would count only children that have exited."""

    def __init__(self, work: Path) -> None:
        import psutil

        self.psutil, self.me, self.work = psutil, psutil.Process(), str(work)

    def _others(self) -> dict[int, tuple[str, float]]:
        procs = self.me.children(recursive=True)
        for p in self.psutil.process_iter(["cmdline"]):
            if self.work in " ".join(p.info["cmdline"] or ()):
                procs += [p, *p.children(recursive=True)]
        out = {}
        for p in procs:
            try:
                t, name = p.cpu_times(), " ".join(p.cmdline())
            except self.psutil.Error:  # exited between the listing and the read
                continue
            out[p.pid] = ("interchange" if "interchange" in name else "workers", t.user + t.system)
        return out

    def read(self) -> dict[str, Any]:
        return {"driver": time.process_time(), "procs": self._others(), "rss_mb": self.me.memory_info().rss / 2**20,
                "workers_rss_mb": self._workers_rss()}

    def _workers_rss(self) -> float:
        """The resident memory of the site's worker processes, MB: the children of the forkserver
        the pool (executors/pool_start.py) forks its workers from."""
        total = 0
        for p in self.psutil.process_iter(["cmdline"]):
            try:
                line = " ".join(p.info["cmdline"] or ())
                if self.work in line and "pool_start.py" in line:
                    for server in p.children():
                        if "forkserver" in " ".join(server.cmdline()):
                            total += sum(c.memory_info().rss for c in server.children())
            except self.psutil.Error:
                continue
        return total / 2**20

    @staticmethod
    def spent(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        """CPU seconds between two reads: the driver's, the interchange's, the workers'."""
        out = {"driver": b["driver"] - a["driver"], "interchange": 0.0, "workers": 0.0}
        for pid, (kind, t) in b["procs"].items():
            if pid in a["procs"]:
                out[kind] += t - a["procs"][pid][1]
        return out


def watch_rounds(clock: CpuClock) -> list[tuple[float, dict[str, Any]]]:
    """Marks (wall, CPU) at the start of every round and at the end of the run, by wrapping the
    round loop's `play_round` (a round's CPU is the difference between its mark and the next: its
    tasks, gather, aggregation and hand-off, and the writer's work on the previous round)."""
    from fedgrid.flow.rounds import synchronous

    marks: list[tuple[float, dict[str, Any]]] = []
    inner = synchronous.play_round

    def play_round(drv, rnd, params):  # noqa: ANN001, ANN202 - the wrapped function's own signature
        marks.append((time.perf_counter(), clock.read()))
        return inner(drv, rnd, params)

    synchronous.play_round = play_round
    return marks


def one(clients: int, rounds: int, work: Path, fraction: float = 1.0) -> dict:
    from fedgrid.flow.rounds.runner import run

    clock = CpuClock(work)
    marks = watch_rounds(clock)
    rows = run(job_for(clients, rounds, work, fraction), quiet=True).rows
    registered, clients = clients, rows[-1]["clients_selected"]
    marks.append((time.perf_counter(), clock.read()))
    later = list(range(1, len(rows))) or [0]  # rounds after the first (its workers are still warming)
    spent = [CpuClock.spent(marks[i][1], marks[i + 1][1]) for i in later]
    cpu = {k: statistics.median(s[k] for s in spent) for k in spent[0]}
    per = statistics.median(rows[i]["seconds"] for i in later)
    return {"clients": clients, "registered": registered, "rounds": rounds, "seconds_per_round": per,
            "ms_per_client": per / clients * 1e3, "driver_rss_mb_by_round": [m[1]["rss_mb"] for m in marks],
            "workers_rss_mb_by_round": [m[1]["workers_rss_mb"] for m in marks],
            "driver_cpu_s": cpu["driver"], "driver_cpu_ms_per_client": cpu["driver"] / clients * 1e3,
            "interchange_cpu_ms_per_client": cpu["interchange"] / clients * 1e3,
            "workers_cpu_ms_per_client": cpu["workers"] / clients * 1e3,
            "first_round_s": rows[0]["seconds"], "gather_s": statistics.median(rows[i]["gather_s"] for i in later),
            "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_avg_1m": os.getloadavg()[0],  # the machine's load at the end (other work on its 2 cores)
            "ok": all(r["clients_ok"] == clients for r in rows)}


def echo(task: Any, packed: bool) -> Any:
    """The floor's app: returns the model it was sent, as a train app returns one of the same size."""
    from fedgrid.apps.wire import Packed

    return Packed(task.params) if packed else task.params


def floor(clients: int, rounds: int, work: Path, tuned: bool) -> dict:
    """Parsl alone on the same site: one bare python_app per client, a TrainTask-sized payload.
    `tuned`: with what fedgrid does to Parsl's share (C-pickled arguments and results, the
    DataFlowKernel's log at WARNING); else plain Parsl with its log at INFO."""
    import logging

    from parsl.app.app import python_app
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel
    from parsl.logconfigs.file import FileLogging

    from fedgrid.apps.wire import Packed
    from fedgrid.executors import build_executor
    from fedgrid.flow.rounds.sites import parsl_logging

    job = job_for(clients, rounds, work)
    payload = job_payload(job)
    log = parsl_logging() if tuned else FileLogging(level=logging.INFO)
    dfk = DataFlowKernel(Config(executors=[build_executor(job.sites[0], work)], strategy="none",
                                run_dir=str(work / "parsl"), usage_tracking=0, initialize_logging=log))
    try:
        app = python_app(echo, executors=["htex"], data_flow_kernel=dfk)
        clock, walls, cpus = CpuClock(work), [], []
        for _ in range(rounds):
            t0, c0 = time.perf_counter(), clock.read()
            sent = [copy.copy(payload) for _ in range(clients)]
            for f in as_completed([app(Packed(t) if tuned else t, tuned) for t in sent]):
                f.result()
            walls.append(time.perf_counter() - t0)
            cpus.append(CpuClock.spent(c0, clock.read()))
    finally:
        dfk.cleanup()
    later = list(range(1, rounds)) or [0]
    wall = statistics.median(walls[i] for i in later)
    cpu = {k: statistics.median(cpus[i][k] for i in later) for k in cpus[0]}
    return {"clients": clients, "rounds": rounds, "payload_bytes": len(pickle.dumps(payload)),
            "seconds_per_round": wall, "ms_per_client": wall / clients * 1e3,
            "driver_cpu_ms_per_client": cpu["driver"] / clients * 1e3,
            "interchange_cpu_ms_per_client": cpu["interchange"] / clients * 1e3,
            "workers_cpu_ms_per_client": cpu["workers"] / clients * 1e3, "load_avg_1m": os.getloadavg()[0]}


def flower(clients: int, rounds: int, work: Path) -> dict:
    """Flower's simulation (Ray) of the same work, for the per-client ratio: a ClientApp whose train
    handler sends back the model it got (training removed), every node every round under Flower's
    FedAvg, from this job's initial model. Seconds per round are between the strategy's central
    evaluation calls (one after each round), median of the rounds after the first."""
    flower_offline()
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedgrid.flow.rounds.prepare import build_model

    initial = ArrayRecord({k: Array(v) for k, v in build_model(job_for(clients, rounds, work)).params.items()})
    client, server, marks = ClientApp(), ServerApp(), []

    @client.train()
    def _echo(msg, context):  # noqa: ANN001, ANN202 - a Flower handler
        content = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 8})})
        return Message(content, reply_to=msg)

    @server.main()
    def _main(grid, context) -> None:  # noqa: ANN001
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients).start(
            grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=lambda rnd, a: marks.append(time.time()))

    simulate(server, client, clients)
    per = statistics.median(b - a for a, b in zip(marks[1:-1], marks[2:], strict=True))
    return {"clients": clients, "rounds": rounds, "seconds_per_round": per, "ms_per_client": per / clients * 1e3,
            "driver_cpu_ms_per_client": float("nan"), "load_avg_1m": os.getloadavg()[0]}


def job_payload(job: Any) -> Any:
    """A TrainTask as fedgrid sends it for this job: the job's model, its data block, its code."""
    from fedgrid.flow.rounds.prepare import build_model, open_store
    from fedgrid.flow.rounds.progress import RunProgress
    from fedgrid.flow.rounds.tasks import Tasks

    parts, run_dir = build_model(job), Path(job.checkpoint.dir)
    transfer, store = open_store(job, run_dir, parts.params, RunProgress(1, 0, quiet=True))
    return Tasks(job, run_dir, parts.code, transfer, store, None).train(0, 1, parts.params)


def registered(n: int, fraction: float, rounds: int) -> int:
    """Many registered clients, few a round: the driver's memory must stay flat round after round
    (its per-client arrays are all it keeps of the clients it does not select), and the workers'
    bounded however many clients they have served (train.keep_clients objects each)."""
    out = run_sizes([n], rounds, "one", ["--registered", str(n), "--fraction", str(fraction)])
    save_result("overhead_registered", {"date": time.strftime("%Y-%m-%d"), "fraction": fraction, "results": out})
    r = out[0]
    print(f"{r['registered']:,} registered, {r['clients']:,} a round: {r['ms_per_client']:.2f} ms per client; "
          f"driver RSS at each round's start {[round(m) for m in r['driver_rss_mb_by_round']]} MB; workers' RSS "
          f"{[round(m) for m in r['workers_rss_mb_by_round']]} MB")
    return 0


def run_sizes(sizes: list[int], rounds: int, mode: str, extra: list[str] | None = None) -> list[dict]:
    res = []
    for n in sizes:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, f"--{mode}", str(n), "--rounds", str(rounds), *(extra or [])],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{mode} {n} clients: {res[-1]['seconds_per_round']:.3f} s/round, "
              f"{res[-1]['ms_per_client']:.2f} ms/client wall, {res[-1]['driver_cpu_ms_per_client']:.2f} driver CPU "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="10,100,1000,5000")  # (10,000 adds ~5 min: --clients 1000,5000,10000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--floor", action="store_true", help="also measure a bare Parsl app loop on the same site")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    ap.add_argument("--bare", type=int, help=argparse.SUPPRESS)  # internal: Parsl's floor at one size
    ap.add_argument("--tuned", type=int, help=argparse.SUPPRESS)  # ... with fedgrid's cuts to Parsl's share
    ap.add_argument("--flower", default="", help="also run Flower's simulation of the same work at these sizes "
                    "(e.g. 1000), for the ratio of per-client costs")
    ap.add_argument("--flower-one", type=int, help=argparse.SUPPRESS)  # internal: Flower at one size
    ap.add_argument("--registered", type=int, help="instead: this many registered clients, --fraction of them a "
                    "round, with the driver's and the workers' memory after every round")
    ap.add_argument("--fraction", type=float, default=0.01)
    args = ap.parse_args()
    if args.flower_one:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(flower(args.flower_one, args.rounds, Path(d))))
        return 0
    if args.registered and not args.one:
        return registered(args.registered, args.fraction, args.rounds)
    if args.one or args.bare or args.tuned:
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            out = (one(args.one, args.rounds, work, args.fraction if args.registered else 1.0) if args.one else
                   floor(args.bare or args.tuned, args.rounds, work, tuned=bool(args.tuned)))
            print(json.dumps(out))
        return 0
    sizes = [int(c) for c in args.clients.split(",")]
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "results": run_sizes(sizes, args.rounds, "one")}
    if args.floor:
        out["parsl_floor"] = run_sizes(sizes, args.rounds, "bare")
        out["parsl_floor_tuned"] = run_sizes(sizes, args.rounds, "tuned")
    if args.flower:
        out["flower"] = run_sizes([int(c) for c in args.flower.split(",")], args.rounds, "flower-one")
        best = min(f["ms_per_client"] for f in out["flower"])
        out["ratio_to_flower"] = {r["clients"]: r["ms_per_client"] / best for r in out["results"]}
    save_result("overhead", out)
    print("\n| clients per round | s/round | ms per client | driver CPU ms per client | gather s | driver peak RSS "
          "| all answered |\n|---|---|---|---|---|---|---|")
    for r in out["results"]:
        print(f"| {r['clients']:,} | {r['seconds_per_round']:.3f} | {r['ms_per_client']:.2f} | "
              f"{r['driver_cpu_ms_per_client']:.2f} | {r['gather_s']:.3f} | {r['driver_peak_mb']:.0f} MB | "
              f"{'yes' if r['ok'] else 'NO'} |")
    for f in out.get("flower", []):
        print(f"\nFlower's simulation, {f['clients']:,} clients: {f['seconds_per_round']:.3f} s/round, "
              f"{f['ms_per_client']:.2f} ms per client; fedgrid per client / Flower's: "
              + ", ".join(f"{n:,}: {v:.3f}x" for n, v in out["ratio_to_flower"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
