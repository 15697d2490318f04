"""Every strategy with its defaults on every shipped example (issue 20): `bench/strategies.py --defaults`.

Each run is the example's own job file with only ``strategy: {name: X}`` changed (no other
strategy option), run by the CLI in its own process as a user would run it, one run each. A
strategy the job refuses is recorded with the refusal's line; the warnings `fedgrid check` prints
for it are recorded too. The score is the example's headline metric at its last round: central test
accuracy where the example has a test set, the clients' federated metric otherwise. The gap to
FedAvg is in points for a share (accuracy, AUC) and in percent of FedAvg's value for an error
(RMSE, perplexity), where points would mean nothing.

Results merge into bench/results/strategies.json under "defaults"; the Markdown table is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Example:
    job: str  # relative to the repository
    metric: str  # a column of rounds.parquet
    higher: bool = True  # a share (points) or an error (percent)
    path: tuple[str, ...] = ()  # what the job's client module needs on PYTHONPATH
    options: dict = field(default_factory=dict)  # client options to point at files made here


EXAMPLES: dict[str, Example] = {
    "quickstart": Example("examples/quickstart.yaml", "test_accuracy"),
    "fmnist": Example("examples/fmnist.yaml", "test_accuracy"),
    "rehearse": Example("examples/rehearse.yaml", "test_accuracy"),
    "cancer": Example("examples/cancer/job.yaml", "fed_auc", path=("examples/cancer",)),
    "diabetes": Example("examples/diabetes/job.yaml", "fed_rmse", higher=False, path=("examples/diabetes",)),
    "nextchar": Example("examples/nextchar/job.yaml", "fed_accuracy", path=("examples/nextchar",)),
    "lora": Example("examples/lora/job.yaml", "fed_perplexity", higher=False,
                    path=("examples/lora", "examples/nextchar"), options={"base": "{work}/lora-base"}),
}
STRATEGIES = ["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova",
              "median", "trimmed_mean", "krum", "multikrum", "fedbuff"]


def _env(ex: Example) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(str(REPO / p) for p in ex.path), env.get("PYTHONPATH", "")])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _job(ex: Example, strategy: str, work: Path, tag: str) -> Path:
    job = yaml.safe_load((REPO / ex.job).read_text())
    job["strategy"] = {"name": strategy}
    job["checkpoint"] = {**job.get("checkpoint", {}), "dir": str(work / tag)}
    if ex.options:
        job["client"]["options"].update({k: v.format(work=work) for k, v in ex.options.items()})
    out = work / f"{tag}.yaml"
    out.write_text(yaml.safe_dump(job, sort_keys=False))
    return out


def _lora_base(work: Path) -> None:
    """The LoRA example fine-tunes a base pre-trained once, as its README says."""
    if not (work / "lora-base").exists():
        subprocess.run([sys.executable, str(REPO / "examples/lora/pretrain.py"), "--out", str(work / "lora-base")],
                       check=True, cwd=REPO, env=_env(EXAMPLES["lora"]))


def check(ex: Example, job: Path) -> tuple[int, str, list[str]]:
    """`fedgrid check` on a run's job file: (exit code, its error, its warnings), without the
    temporary file's path."""
    done = subprocess.run(["fedgrid", "check", str(job)], cwd=REPO, env=_env(ex), capture_output=True, text=True)
    warnings = [f"warning: {_strip(ln)}" for ln in done.stdout.splitlines() if ln.startswith("warning:")]
    return done.returncode, _strip((done.stderr.strip().splitlines() or ["?"])[-1]), warnings


def recheck(part: dict, work: Path) -> None:
    """Refresh the recorded warnings of runs already made (they depend on the job alone)."""
    for example, runs in part.items():
        for strategy, r in runs.items():
            if "refused" not in r:
                ex = EXAMPLES[example]
                r["warnings"] = check(ex, _job(ex, strategy, work, f"{example}-{strategy}"))[2]


def _strip(line: str) -> str:
    """A message of `fedgrid check` without its "error: " or "warning: " and the job file's path."""
    text = line.split(": ", 1)[1] if line.startswith(("error: ", "warning: ")) else line
    _, sep, rest = text.partition(".yaml: ")
    return rest if sep else text


def run_one(example: str, strategy: str, work: Path) -> dict:
    import pyarrow.parquet as pq

    ex = EXAMPLES[example]
    if example == "lora":
        _lora_base(work)
    tag = f"{example}-{strategy}"
    job = _job(ex, strategy, work, tag)
    rc, error, warnings = check(ex, job)
    if rc:
        return {"refused": error, "warnings": warnings}
    t0 = time.perf_counter()
    done = subprocess.run(["fedgrid", "run", str(job), "--fresh"], cwd=REPO, env=_env(ex), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    rows = work / tag / "rounds.parquet"
    series = pq.read_table(rows).column(ex.metric).to_pylist() if rows.exists() else []
    out = {"series": series, "final": series[-1] if series else None, "seconds": round(seconds, 1),
           "warnings": warnings, "rc": done.returncode}
    if done.returncode:
        out["error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
    return out


def gap(ex: Example, value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return ""
    if ex.higher:
        return f"{(value - base) * 100:+.1f}"
    return f"{(value - base) / base * 100:+.1f}%"


def within(ex: Example, value: float, base: float, points: float = 2.0) -> bool:
    """The issue's bar: 2 points of a share, or 2% of an error, against FedAvg."""
    return value >= base - points / 100 if ex.higher else value <= base * (1 + points / 100)


def cell(ex: Example, r: dict | None, base: float | None) -> str:
    if r is None:
        return "not run"
    if "refused" in r:
        return "refused"
    if r.get("final") is None:
        return f"failed (rc {r.get('rc')})"
    mark = "" if base is None or within(ex, r["final"], base) else " **x**"
    warn = " (w)" if r.get("warnings") else ""
    return f"{r['final']:.4g} ({gap(ex, r['final'], base)}){mark}{warn}"


def table(res: dict, examples: list[str], strategies: list[str]) -> str:
    lines = ["| strategy | " + " | ".join(f"{e} ({EXAMPLES[e].metric})" for e in examples) + " |",
             "|---|" + "---|" * len(examples)]
    for s in strategies:
        cells = []
        for e in examples:
            base = (res.get(e, {}).get("fedavg") or {}).get("final")
            cells.append(cell(EXAMPLES[e], res.get(e, {}).get(s), base))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    notes = sorted({(s, _strip(r["refused"]) if "refused" in r else "; ".join(r["warnings"]))
                    for e in examples for s, r in res.get(e, {}).items()
                    if s in strategies and ("refused" in r or r.get("warnings"))})
    return "\n".join(lines + [""] + [f"- {s}: {why}" for s, why in notes])


def sweep(examples: list[str], strategies: list[str], keep: bool, out: Path, work: Path) -> dict:
    res: dict = json.loads(out.read_text()) if out.exists() else {}
    part = res.setdefault("defaults", {})
    for e in examples:
        for s in strategies:
            if keep and s in part.get(e, {}):
                continue
            r = run_one(e, s, work)
            part.setdefault(e, {})[s] = {**r, "date": time.strftime("%Y-%m-%d")}
            print(f"{e} {s}: {r.get('final', r.get('refused'))} ({r.get('seconds', 0)} s)", file=sys.stderr, flush=True)
            out.write_text(json.dumps(res, indent=1))  # after every run: a long sweep never loses its results
    return part
