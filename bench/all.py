"""`make bench`: every benchmark, quick by default (under 10 minutes on 2 cores), `--full` for all.

    python bench/all.py            # compare (fedgrid vs Flower vs floor), overhead, throughput, warm-up
    python bench/all.py --full     # + sites, faults, hetero, crash drill, strategies, Byzantine, traffic,
                                   #   personalization

Each benchmark runs in its own process and writes its JSON under bench/results/; this prints the
machine and versions, then each benchmark's Markdown table (what BENCHMARKS.md is made of).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = [("compare.py", []), ("overhead.py", ["--flower", "1000"]), ("startup.py", []), ("throughput.py", []),
         ("warmup.py", [])]
FULL = [("sites.py", []), ("faults.py", []), ("hetero.py", []), ("crash.py", []), ("strategies.py", []),
        ("strategies.py", ["--byzantine", "--clean"]), ("traffic.py", []), ("personal.py", []),
        ("encryption.py", []), ("flower_app.py", [])]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    versions = {}
    for pkg in ("fedgrid", "parsl", "globus-compute-sdk", "torch", "numpy", "pyarrow", "flwr", "ray"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem, 1),
            "python": platform.python_version(), "os": platform.platform(), "versions": versions}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    env = machine()
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "machine.json").write_text(json.dumps(env, indent=1))
    print(f"Machine: {env['cpu']}, {env['cores']} cores, {env['memory_gb']} GB; Python {env['python']}; "
          + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f"; {env['date']}\n")
    failed, t_all = [], time.perf_counter()
    for script, extra in QUICK + (FULL if args.full else []):
        if args.full and script == "compare.py":
            extra = ["--repeat", "3"]  # alternating runs: the VM's drift hits both frameworks alike
        t0 = time.perf_counter()
        print(f"### bench/{script} {' '.join(extra)}\n", flush=True)
        proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *extra], text=True, capture_output=True)
        print(proc.stdout.strip())
        if proc.returncode != 0:
            failed.append(script)
            print(f"\n(failed, exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]})")
        print(f"\n({time.perf_counter() - t0:.0f} s)\n", flush=True)
    print(f"all benchmarks: {time.perf_counter() - t_all:.0f} s" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
