"""fedgrid side by side with Flower, and against the compute floor (issue 6).

    python bench/compare.py [--rounds 10] [--repeat 3]

The fmnist example's workload (20 Dirichlet clients, the cnn, 1 local epoch, lr 0.05, every client
every round, central evaluation each round) three ways, one after another on this machine:

- **fedgrid**: `fedgrid run examples/fmnist.yaml --fresh` in a subprocess, as a user runs it
  (one HTEX site of 2 workers, one CPU per client);
- **Flower**: the same model, partitions, initial weights, shuffling and FedAvg under Flower's
  simulation engine (bench/flower_fmnist.py; `pip install 'fedgrid[bench]'`), one CPU per client;
- **floor**: every client's shard trained once in one process with no framework at all
  (bench/run.py), divided by the 2 workers: the least a round can take here if two cores trained
  at twice the speed of one. Beside it, the **measured two-process floor**: the same training split
  over two processes running at once, no framework, which shows what the two cores really give.

`--repeat N` runs fedgrid and Flower alternately N times (so drifts of this shared VM hit both
alike) and reports the run with the median seconds per round of each, with every run's value.

Both frameworks are timed from their process's start. Peak memory is the resident memory of the
process and all its children (workers, interchange, Ray) sampled every 0.2 s. Flower evaluates
inside its round while fedgrid evaluates in the background, so Flower's seconds per round is also
given without its evaluation. Writes bench/results/compare.json; prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from flower_fmnist import PeakRSS  # noqa: E402
from run import bench_floor, bench_floor_parallel, bench_fmnist  # noqa: E402


def cpu_clock() -> dict:
    """Machine-wide CPU seconds so far: busy (user + system) and stolen by the hypervisor."""
    import psutil

    t = psutil.cpu_times()
    return {"busy": t.user + t.system + t.nice, "steal": getattr(t, "steal", 0.0)}


def since(c0: dict) -> dict:
    c1 = cpu_clock()
    return {k: round(c1[k] - c0[k], 2) for k in c0}


def run_fedgrid(rounds: int, work: Path) -> dict:
    mem = PeakRSS()
    mem.start()
    c0 = cpu_clock()
    try:
        out = bench_fmnist(rounds, work)
    finally:
        out_peak = mem.stop()
    return {**out, "peak_rss_mb": out_peak / 2**20, "cpu_s": since(c0)}


def run_flower(rounds: int, work: Path) -> dict | None:
    dest = work / "flower.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "flower_fmnist.py"), "--rounds", str(rounds),
                           "--out", str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"Flower run failed (pip install 'fedgrid[bench]'?): {' | '.join(tail)}", file=sys.stderr)
        return None
    return json.loads(dest.read_text())


def median_run(runs: list[dict]) -> dict | None:
    """The run whose median seconds per round is the median of the runs (its numbers stay together)."""
    if not runs:
        return None
    ranked = sorted(runs, key=lambda r: r["median_round_s"])
    return {**ranked[(len(ranked) - 1) // 2], "all_median_round_s": [r["median_round_s"] for r in runs]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    fgs, fls = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            fgs.append(run_fedgrid(args.rounds, Path(d)))
            c0 = cpu_clock()
            if (one := run_flower(args.rounds, Path(d))) is not None:
                fls.append({**one, "cpu_s": since(c0)})
    fg, fl = median_run(fgs), median_run(fls)
    assert fg is not None
    floor = bench_floor()
    floor_round = floor["train_all_s"] / fg["workers"]
    floor_eval_round = (floor["train_all_s"] + floor["eval_s"]) / fg["workers"]
    par = bench_floor_parallel(fg["workers"])
    res = {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "repeat": args.repeat, "fedgrid": fg,
           "flower": fl, "floor": {**floor, "per_round_s": floor_round, "with_eval_round_s": floor_eval_round,
                                   "workers": fg["workers"],
                                   "parallel_round_s": par["round_s"]}}
    out = REPO / "bench" / "results" / "compare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))

    print(f"| fmnist, {args.rounds} rounds, 20 clients, 2 CPUs | fedgrid | Flower | fedgrid / Flower |")
    print("|---|---|---|---|")
    if fl:
        fl_no_eval = sorted(r - e for r, e in zip(fl["round_s"], fl["eval_s"], strict=True))[len(fl["round_s"]) // 2]
        rows = [("time to first finished round", fg["first_round_s"], fl["first_round_s"], "s"),
                ("median seconds per round", fg["median_round_s"], fl["median_round_s"], "s"),
                ("... Flower without its in-round evaluation", fg["median_round_s"], fl_no_eval, "s"),
                ("total wall time", fg["total_s"], fl["total_s"], "s"),
                ("peak memory (process tree)", fg["peak_rss_mb"], fl["peak_rss_mb"], "MB")]
        for name, a, b, unit in rows:
            print(f"| {name} | {a:.2f} {unit} | {b:.2f} {unit} | {a / b:.2f} |")
        print(f"| accuracy at round {args.rounds} | {fg['accuracy'][-1]:.4f} | {fl['accuracy'][-1]:.4f} | "
              f"{(fg['accuracy'][-1] - fl['accuracy'][-1]) * 100:+.2f} points |")
        print(f"| accuracy per round | {', '.join(f'{a:.3f}' for a in fg['accuracy'])} | "
              f"{', '.join(f'{a:.3f}' for a in fl['accuracy'])} | |")
    if args.repeat > 1:
        print(f"| median s/round of each run | {', '.join(f'{x:.2f}' for x in fg['all_median_round_s'])} | "
              + (f"{', '.join(f'{x:.2f}' for x in fl['all_median_round_s'])}" if fl else "") + " | |")
    print(f"\nCompute floor: {floor['samples']} samples trained once in {floor['train_all_s']:.2f} s on one thread, "
          f"{floor_round:.2f} s per round on {fg['workers']} workers; fedgrid's median round is "
          f"{fg['median_round_s'] / floor_round:.2f}x the floor (target <= 1.15)"
          + (f", Flower's {fl['median_round_s'] / floor_round:.2f}x." if fl else "."))
    print(f"With the central evaluation counted ({floor['eval_s']:.2f} s on one thread, the same cores): "
          f"{floor_eval_round:.2f} s per round; fedgrid's median round is "
          f"{fg['median_round_s'] / floor_eval_round:.2f}x it (target <= 1.10)"
          + (f", Flower's {fl['median_round_s'] / floor_eval_round:.2f}x." if fl else "."))
    # a row's seconds end when its clients are gathered: what the driver does before the next round
    # starts (waiting for the previous round's write) is only in the time from one round's end to the next
    e2e = statistics.median(fg["end_to_end_s"])
    print(f"From one round's end to the next (the time between rounds included): fedgrid's median is {e2e:.2f} s, "
          f"{e2e / floor_eval_round:.2f}x the floor with the evaluation.")
    print(f"Measured two-process floor (the same training in {fg['workers']} processes at once, no framework): "
          f"{par['round_s']:.2f} s per round, {par['round_s'] / floor_round:.2f}x the one-process floor; fedgrid "
          f"is {fg['median_round_s'] / par['round_s']:.2f}x it"
          + (f", Flower {fl['median_round_s'] / par['round_s']:.2f}x." if fl else "."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
