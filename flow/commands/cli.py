"""`fedgrid` command line: run, schedule, check, status, report, export, partition, endpoint-config.

Exit codes: 0 success (also a run stopped by SIGTERM after checkpointing its round); 1 a run
stopped (a round missed its quorum on every attempt); 2 the job file, run directory or arguments
are wrong (one line naming file, key and expectation, no traceback); 3 the run directory is in use
by another driver (or scheduler); 130 interrupted (Ctrl-C, or a second SIGTERM).

SIGTERM (what cron, systemd and Slurm send) asks a run to finish the round in progress (waiting at
most round.stop_wait_s for it), checkpoint it and exit 0; a second SIGTERM, or Ctrl-C, stops at
once (finished rounds are already saved).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

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
    r.add_argument("--rounds", type=_rounds_arg, metavar="N|+N",
                   help="train up to round N (overrides the job's rounds), or +N: N more rounds past the newest "
                        "checkpoint (idempotent under cron: overlapping invocations are refused)")
    r.add_argument("--quiet", "-q", action="store_true", help="print only the final summary")
    _log_arg(r)
    sc = sub.add_parser("schedule", help="run a job on a cron schedule, N more rounds at each firing")
    _job_args(sc)
    sc.add_argument("--cron", help="cron expression, e.g. '0 2 * * *' (02:00 daily); six fields add seconds "
                                   "last ('*/30 * * * * *'). Default: the job's schedule.cron")
    sc.add_argument("--rounds-per-run", type=int, help="rounds per firing (default: schedule.rounds_per_run)")
    sc.add_argument("--firings", type=int, help="exit after this many runs (default: run until SIGTERM)")
    sc.add_argument("--quiet", "-q", action="store_true", help="print only each run's summary")
    _log_arg(sc)
    c = sub.add_parser("check", help="validate a job and print its plan; starts nothing")
    _job_args(c)
    c.add_argument("--strict", action="store_true",
                   help="fail when a site's provider cannot be set up from this machine (no kubeconfig, "
                        "no AWS credentials)")
    s = sub.add_parser("status", help="show the rounds of a run directory")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    rp = sub.add_parser("report", help="write PNG plots and a Markdown summary of a run")
    rp.add_argument("run_dir")
    rp.add_argument("--out", help="folder for the report (default RUN_DIR/report)")
    x = sub.add_parser("export", help="write a round's global model as safetensors or a torch state_dict, or a "
                                      "LoRA run's adapter for PEFT")
    x.add_argument("run_dir")
    x.add_argument("--round", type=int, help="round to export (default: the newest)")
    x.add_argument("--format", choices=["safetensors", "torch", "peft"], default="safetensors")
    x.add_argument("--out", help="output file (default RUN_DIR/export/model-round-NNNNNN.<ext>; peft: a folder "
                                 "RUN_DIR/export/adapter-round-NNNNNN; with --client, -client-NNNNN added)")
    x.add_argument("--client", type=int, metavar="N",
                   help="client N's personalized model (a run with a personal: block): the global model with its "
                        "personal layers, or its Ditto model; read from the run's store")
    p = sub.add_parser("partition", help="write per-client Parquet shards (and test.parquet) for a job's data")
    _job_args(p)
    p.add_argument("--out", required=True, help="folder for client-NNN.parquet files")
    e = sub.add_parser("endpoint-config", help="print a Globus Compute endpoint config for a globus_compute site")
    e.add_argument("site", help="name of a globus_compute site in the job")
    e.add_argument("--job", required=True, help="job YAML file")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return ap


def _rounds_arg(v: str) -> tuple[bool, int]:
    """``N`` -> (False, N); ``+N`` -> (True, N): N more rounds."""
    m = re.fullmatch(r"(\+?)(\d+)", v.strip())
    if not m or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"expected a round count N or +N (N >= 1), got {v!r}")
    return bool(m.group(1)), int(m.group(2))


def _log_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="format of RUN_DIR/fedgrid.log (json: one object a line, for log shippers)")


STOP = threading.Event()  # set by the first SIGTERM: finish the round, checkpoint, exit 0


def _terminate(signum: int, frame: object) -> None:
    if STOP.is_set():  # the second one: stop now
        raise KeyboardInterrupt
    STOP.set()
    print("SIGTERM: finishing the round in progress, then stopping (send it again to stop now)",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    STOP.clear()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return {"run": cmd_run, "schedule": cmd_schedule, "check": cmd_check, "status": cmd_status,
                "report": cmd_report, "export": cmd_export, "partition": cmd_partition,
                "endpoint-config": cmd_endpoint_config}[args.cmd](args)
    except (ConfigError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished rounds are saved, `fedgrid run` resumes", file=sys.stderr)
        return 130


def _load(args: argparse.Namespace) -> Job:
    overrides = list(args.overrides)
    rounds = getattr(args, "rounds", None)
    if rounds is not None and not rounds[0]:
        overrides.append(f"rounds={rounds[1]}")
    return load_job(args.job, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from fedgrid.flow.persist.runlock import RunDirBusy
    from fedgrid.flow.rounds import timeline
    from fedgrid.flow.rounds.runner import ResumeRefused, RoundFailed, run

    timeline.early("fedgrid imported")
    job = _load(args)
    timeline.early("job read and checked")
    from fedgrid.executors import spare_imports

    spare_imports({s.executor.kind for s in job.sites})
    more = args.rounds[1] if args.rounds and args.rounds[0] else None
    try:
        run(job, base=Path.cwd(), fresh=args.fresh, quiet=args.quiet, more=more, stop=STOP,
            log_format=args.log_format)
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


def cmd_schedule(args: argparse.Namespace) -> int:
    from fedgrid.flow.commands.schedule import Scheduler, SchedulerBusy
    from fedgrid.flow.rounds.runner import run

    sched = Scheduler(load=lambda: _load(args), cron=args.cron, rounds_per_run=args.rounds_per_run, run=run,
                      base=Path.cwd(), stop=STOP, firings=args.firings, quiet=args.quiet,
                      log_format=args.log_format, source=args.job)
    try:
        n = sched.serve()
    except SchedulerBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(f"schedule: stopped after {n} run(s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedgrid.flow.commands.report import write_report

    run_dir = _run_dir(args.run_dir)
    try:
        paths = write_report(run_dir, Path(args.out) if args.out else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fedgrid.flow.commands.export import export_model

    run_dir = _run_dir(args.run_dir)
    try:
        path = export_model(run_dir, args.round, args.format, Path(args.out) if args.out else None, args.client)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}" if args.format == "peft" else f"wrote {path} (and {path.with_suffix('.json').name} "
          "describing it)")
    return 0


def _run_dir(arg: str) -> Path:
    run_dir = Path(arg)
    if not run_dir.is_dir():
        raise ConfigError(run_dir, "", "run directory not found")
    return run_dir


def cmd_check(args: argparse.Namespace) -> int:
    from fedgrid.flow.commands.plan import print_plan

    job = _load(args)
    try:
        warnings = print_plan(job, args.job, Path.cwd())
    except (OSError, ValueError) as e:
        print(f"error: {args.job}: {e}", file=sys.stderr)
        return 2
    from fedgrid.flow.config.checks import strategy_advice

    for key, why in strategy_advice(job):
        print(f"warning: {args.job}: {key}: {why}")
    if warnings and args.strict:
        print(f"error: {len(warnings)} site(s) cannot be set up from this machine (--strict)", file=sys.stderr)
        return 2
    return 0


def cmd_endpoint_config(args: argparse.Namespace) -> int:
    from fedgrid.flow.commands.endpoint_config import endpoint_config

    job = _load(args)
    print(endpoint_config(job, args.site, args.job), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fedgrid.flow.commands.status import status_info

    run_dir = _run_dir(args.run_dir)
    info = status_info(run_dir)
    if args.json:
        print(json.dumps(info, default=str, indent=2))
        return 0
    if info["job"] is None:
        print(f"{run_dir}: no valid rounds yet")
        return 0
    from fedgrid.flow.rounds.progress import round_line

    state = f"running (pid {info['running_pid']})" if info["running_pid"] else "not running"
    print(f"{info['job']}: {info['rounds_done']}/{info['rounds_target']} rounds, {state}")
    if info["last"]:
        print("last: " + round_line(info["last"], info["rounds_target"] or 0))
    if info["best_accuracy"] is not None:
        print(f"best test accuracy {info['best_accuracy']:.4f}; median {info['seconds_per_round']:.2f} s/round; "
              f"{info['total_failures']} client failure(s) recorded")
    _print_metrics(info["metrics"])
    if info["failures_by_reason"]:
        print("failures by reason: " + ", ".join(f"{k} {n}" for k, n in info["failures_by_reason"].items()))
    for site, v in info["sites"].items():
        print(f"site {site}: {v['updates']} updates, {v['failures']} failures, median train "
              f"{_secs(v['train_s_median'])}, queue {_secs(v['queue_s_median'])}")
    _print_blocks(info["blocks"])
    sched = info["schedule"]
    if sched and sched.get("active"):
        print(f"schedule: {sched['cron']} ({sched['rounds_per_run']} rounds a run, pid {sched['pid']}); "
              f"next run {info['next_firing'] or 'now'}")
    elif sched:
        print(f"schedule: {sched['cron']}, scheduler not running (last run {sched.get('last_firing') or 'never'})")
    for s in info["skipped"]:
        print(f"warning: {s['file']}: {s['reason']}")
    return 0


def _print_blocks(sites: dict) -> None:
    """Batch sites: each block's job id and state, and the site's last events (lost, back, ...)."""
    for site, v in sites.items():
        for b in v.get("blocks", []):
            left = f", {b['left_s']:.0f} s of walltime left" if b.get("left_s") is not None else ""
            why = f" ({b['reason']})" if b.get("reason") else ""
            print(f"site {site}: block {b['block']}: {v['scheduler']} job {b['job']} {b['state']}{why}{left}")
        for e in v.get("events", [])[-5:]:
            at = time.strftime("%H:%M:%S", time.localtime(e["at"]))
            print(f"site {site}: {at} {e['event']}: job {e['job']} {e['detail']}")


def _print_metrics(m: dict) -> None:
    """The clients' metrics of the newest round, and of the newest federated evaluation."""
    if m.get("train"):
        print("train metrics (clients, last round): " + ", ".join(f"{k} {v:.4g}" for k, v in m["train"].items()))
    if fed := m.get("federated"):
        parts = [f"{k} {v['mean']:.4g} (min {v['min']:.4g}, p10 {v['p10']:.4g})" for k, v in fed["metrics"].items()]
        print(f"federated evaluation (round {fed['round']}, {fed['clients']} clients, {fed['failed']} failed): "
              + ", ".join(parts))


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


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
