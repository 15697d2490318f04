"""`fedgrid` command line: run, check, status, partition, endpoint-config.

Exit codes: 0 success; 1 a run stopped (a round missed its quorum on every attempt); 2 the job file,
run directory or arguments are wrong (one line naming file, key and expectation, no traceback);
3 the run directory is in use by another driver; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from fedgrid.executors import MissingExtra
from fedgrid.flow.config import ConfigError, Job, load_job


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any job key, e.g. --set round.min_clients=4 --set sites.0.executor.workers=2")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedgrid", description="Federated learning across sites on Parsl.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run or resume a job")
    _job_args(r)
    r.add_argument("--fresh", action="store_true", help="start over; earlier rounds are archived, not deleted")
    r.add_argument("--rounds", type=int, help="train up to this many rounds (overrides the job's rounds)")
    r.add_argument("--quiet", "-q", action="store_true", help="print only the final summary")
    c = sub.add_parser("check", help="validate a job and print its plan; starts nothing")
    _job_args(c)
    c.add_argument("--strict", action="store_true",
                   help="fail when a site's provider cannot be set up from this machine (no kubeconfig, "
                        "no AWS credentials)")
    s = sub.add_parser("status", help="show the rounds of a run directory")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("partition", help="write per-client Parquet shards (and test.parquet) for a job's data")
    _job_args(p)
    p.add_argument("--out", required=True, help="folder for client-NNN.parquet files")
    e = sub.add_parser("endpoint-config", help="print a Globus Compute endpoint config for a globus_compute site")
    e.add_argument("site", help="name of a globus_compute site in the job")
    e.add_argument("--job", required=True, help="job YAML file")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return ap


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # SIGTERM (scheduler, kill) unwinds like Ctrl-C, so executors are shut down and the lock released.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return {"run": cmd_run, "check": cmd_check, "status": cmd_status, "partition": cmd_partition,
                "endpoint-config": cmd_endpoint_config}[args.cmd](args)
    except (ConfigError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished rounds are saved, `fedgrid run` resumes", file=sys.stderr)
        return 130


def _load(args: argparse.Namespace) -> Job:
    overrides = list(args.overrides)
    if getattr(args, "rounds", None) is not None:
        overrides.append(f"rounds={args.rounds}")
    return load_job(args.job, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from fedgrid.flow.runlock import RunDirBusy
    from fedgrid.flow.runner import ResumeRefused, RoundFailed, run

    job = _load(args)
    try:
        run(job, base=Path.cwd(), fresh=args.fresh, quiet=args.quiet)
    except ConfigError as e:  # found once the run knew the model's size: name the job file
        raise ConfigError(args.job if e.file == "<job>" else e.file, e.key, e.expected) from None
    except ResumeRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunDirBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except RoundFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # bad data files, disk full, permissions: say what, not where
        print(f"error: {e} (details in {job.run_dir(Path.cwd()) / 'fedgrid.log'})", file=sys.stderr)
        return 2
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fedgrid.flow.plan import print_plan

    job = _load(args)
    try:
        warnings = print_plan(job, args.job, Path.cwd())
    except (OSError, ValueError) as e:
        print(f"error: {args.job}: {e}", file=sys.stderr)
        return 2
    if warnings and args.strict:
        print(f"error: {len(warnings)} site(s) cannot be set up from this machine (--strict)", file=sys.stderr)
        return 2
    return 0


def cmd_endpoint_config(args: argparse.Namespace) -> int:
    from fedgrid.flow.endpoint_config import endpoint_config

    job = _load(args)
    print(endpoint_config(job, args.site, args.job), end="")
    return 0


def status_info(run_dir: Path) -> dict[str, Any]:
    from fedgrid.flow import checkpoint as ckpt

    state, skipped = ckpt.latest_valid(run_dir, quarantine=False)
    rows = ckpt.reconcile_rows(run_dir, state.round if state else 0)
    target = (state.job.get("rounds") if state else None)
    holder = None
    lock = run_dir / ".lock"
    if lock.exists():
        import fcntl
        import os

        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            holder = lock.read_text().strip() or "?"
        finally:
            os.close(fd)
    last = rows[-1] if rows else {}
    return {
        "run_dir": str(run_dir), "job": state.job.get("name") if state else None,
        "rounds_done": state.round if state else 0, "rounds_target": target,
        "running_pid": holder, "last": last,
        "best_accuracy": max((r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None),
                             default=None),
        "total_failures": sum(r.get("clients_failed") or 0 for r in rows),
        "seconds_per_round": (sorted(r["seconds"] for r in rows)[len(rows) // 2] if rows else None),
        "skipped": [{"file": str(p), "reason": w} for p, w in skipped],
    }


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(run_dir, "", "run directory not found")
    info = status_info(run_dir)
    if args.json:
        print(json.dumps(info, default=str, indent=2))
        return 0
    if info["job"] is None:
        print(f"{run_dir}: no valid rounds yet")
        return 0
    from fedgrid.flow.progress import round_line

    state = f"running (pid {info['running_pid']})" if info["running_pid"] else "not running"
    print(f"{info['job']}: {info['rounds_done']}/{info['rounds_target']} rounds, {state}")
    if info["last"]:
        print("last: " + round_line(info["last"], info["rounds_target"] or 0))
    if info["best_accuracy"] is not None:
        print(f"best test accuracy {info['best_accuracy']:.4f}; median {info['seconds_per_round']:.2f} s/round; "
              f"{info['total_failures']} client failure(s) recorded")
    for s in info["skipped"]:
        print(f"warning: {s['file']}: {s['reason']}")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from fedgrid.apps.shards import write_shards

    job = _load(args)
    out = Path(args.out)
    paths = write_shards(job, out)
    print(f"wrote {len(paths)} files to {out}; give client-NNN.parquet to the site hosting client NNN and use:")
    print(f"  data: {{dataset: parquet, path: '{out}/client-{{client:03d}}.parquet', "
          f"test_path: '{out}/test.parquet', partition: {{kind: none}}, clients: {job.data.clients}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
