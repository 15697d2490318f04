"""Crash drill: SIGKILL the driver at random moments, restart it, and check nothing was lost.

    python bench/crash.py                  # 20 kills, then a final run to completion
    python bench/crash.py --cycles 5 --rounds 20

Each cycle starts `fedgrid run JOB` (two HTEX sites, digits) and SIGKILLs the driver after a
random 0.5-15 s: during startup, mid-round, or mid-checkpoint. The next start reaps what the dead
driver left and resumes. At the end: the rounds table holds rounds 1..N exactly once each, every
round file verifies (sha256), the last round is N, and no worker pool or interchange of the run is
alive. Prints a Markdown summary for BENCHMARKS.md; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.runlock import recorded_processes
from fedgrid.flow.persist.table import read_rows


def job_file(work: Path, rounds: int) -> Path:
    job = {"name": "crash", "rounds": rounds, "seed": 0, "model": "cnn",
           "data": {"dataset": "digits", "clients": 6, "partition": {"kind": "dirichlet", "alpha": 0.5}},
           "train": {"epochs": 5, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
           "round": {"min_clients": 4, "deadline_s": 120},
           "sites": [{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 3},
                     {"name": "b", "executor": {"kind": "htex", "workers": 1}, "clients": 3}],
           "checkpoint": {"dir": str(work / "run")}}
    path = work / "crash.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def processes_of(run_dir: Path) -> list[int]:
    """Live processes whose command line names the run directory (pools log under it)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(str(run_dir) in a for a in p.info["cmdline"] or []):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    cmd = [sys.executable, "-m", "fedgrid.flow.commands.cli", "run"]
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        job = job_file(work, args.rounds)
        run_dir = work / "run"
        progress = []
        for _ in range(args.cycles):
            proc = subprocess.Popen([*cmd, str(job), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            delay = rnd.uniform(0.5, 15.0)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            state, _ = ckpt.latest_valid(run_dir, quarantine=False)
            progress.append((round(delay, 1), state.round if state else 0))
        t0 = time.perf_counter()
        final = subprocess.run([*cmd, str(job), "--quiet"], capture_output=True, text=True)
        final_s = time.perf_counter() - t0
        time.sleep(1.0)
        rows = [r["round"] for r in read_rows(run_dir)]
        files = ckpt.round_files(run_dir)
        bad = []
        for _, path in files:
            try:
                ckpt.read_round(path)
            except ckpt.CheckpointError as e:
                bad.append(f"{path.name}: {e}")
        corrupt = sorted(p.name for p in (run_dir / "rounds" / "corrupt").glob("*")) \
            if (run_dir / "rounds" / "corrupt").is_dir() else []
        checks = {
            "final run exit code 0": final.returncode == 0,
            f"rounds table is exactly 1..{args.rounds}": rows == list(range(1, args.rounds + 1)),
            f"round files 0..{args.rounds} all present": [r for r, _ in files] == list(range(args.rounds + 1)),
            "every round file verifies": not bad,
            "no process of the run left": recorded_processes(run_dir) == [] and processes_of(run_dir) == [],
        }
    print(f"| crash drill: {args.cycles} SIGKILLs of the driver at random moments, then one run to the end | |")
    print("|---|---|")
    print(f"| (kill after s, rounds done) per cycle | {', '.join(f'({a}, {b})' for a, b in progress)} |")
    print(f"| final run to round {args.rounds} | {final_s:.1f} s |")
    print(f"| files quarantined as torn/corrupt on resume | {len(corrupt)} |")
    for name, ok in checks.items():
        print(f"| {name} | {'yes' if ok else 'NO'} |")
    if bad:
        print("\n".join(bad))
    if final.returncode:
        print(final.stderr[-2000:])
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
