"""Loading a job: YAML, ``--set`` overrides, validation, and pydantic's errors as one line.

A misspelled key is reported with the keys valid at that place; an unknown strategy or site kind
with the valid names; a value with what was expected and what was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from fedgrid.executors import KINDS, kind_module
from fedgrid.flow.config.checks import check_consistency
from fedgrid.flow.config.errors import ConfigError
from fedgrid.flow.config.schema import Job
from fedgrid.flow.strategies import STRATEGIES


def _loc(err: ErrorDetails) -> str:
    return ".".join(str(p) for p in _path(err["loc"]))


def _path(loc: tuple[Any, ...]) -> list[Any]:
    """The user's key path: pydantic adds validator names and the union tag (`executor.slurm.x`)."""
    out: list[Any] = []
    for p in loc:
        if str(p).startswith("function-"):
            continue
        if out and out[-1] == "executor" and p in KINDS:
            continue
        out.append(p)
    return out


def _describe(err: ErrorDetails) -> str:
    t, msg, val = err["type"], err["msg"], err.get("input")
    if t == "extra_forbidden":
        return "unknown key"
    if t == "missing":
        return "required key is missing"
    if t == "union_tag_invalid":
        ctx = err.get("ctx", {})
        what, names = (("strategy", STRATEGIES) if ctx.get("discriminator") == "'name'" else ("executor kind", KINDS))
        return f"unknown {what} {ctx.get('tag')!r}; expected one of {', '.join(names)}"
    if t == "literal_error":
        return f"{msg.replace('Input should be', 'expected')}, got {val!r}"
    msg = msg.replace("Input should be", "expected").replace("Value error, ", "")
    if t == "value_error" and (isinstance(val, dict | list) or "got " in msg):
        return msg  # our validators already say what they got
    shown = repr(val) if not isinstance(val, dict | list) else type(val).__name__
    return f"{msg}, got {shown}"


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Keys valid at the parent of `loc`, to list them when a key is unknown."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or str(part).startswith("function-"):
            continue
        if part in KINDS and cur is model:
            continue
        if part in KINDS:  # the union tag pydantic puts after `executor`: pick that kind's Spec
            cur = kind_module(part).Spec
            continue
        field = cur.model_fields.get(part) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        args = [a for x in (ann, *getattr(ann, "__args__", ())) for a in (x, *getattr(x, "__args__", ()))]
        cand = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cand:
            return []
        cur = cand[0]
    return sorted(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def apply_overrides(raw: dict[str, Any], overrides: list[str], file: str | Path) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (``8``, ``true``, ``[1,2]``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(file, item, "--set expects dotted.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        cur: Any = raw
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(cur, list):
                if not p.isdigit() or int(p) >= len(cur):
                    raise ConfigError(file, key, f"index {p!r} is not a valid list index (0..{len(cur) - 1})")
                if last:
                    cur[int(p)] = yaml.safe_load(value)
                else:
                    cur = cur[int(p)]
            elif isinstance(cur, dict):
                if last:
                    cur[p] = yaml.safe_load(value)
                else:
                    if cur.get(p) is None:
                        cur[p] = {}
                    elif not isinstance(cur[p], dict | list):
                        raise ConfigError(file, key, f"{'.'.join(parts[:i + 1])} is a value, not a mapping; "
                                          "cannot set a key inside it")
                    cur = cur[p]
            else:
                raise ConfigError(file, key, "cannot set a key inside a scalar value")
    return raw


def parse_job(raw: Any, file: str | Path = "<job>", overrides: list[str] | None = None) -> Job:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file, "", f"expected a mapping of job keys at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [], file)
    try:
        job = Job.model_validate(raw)
    except ValidationError as e:
        errs = e.errors()
        # a misspelled key shows up twice: as unknown, and as the required key it was meant to be
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        what = _describe(err)
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(Job, tuple(err["loc"]))
            if valid:
                what += f"; valid keys: {', '.join(valid)}"
        raise ConfigError(file, _loc(err), what) from None
    resolve_python_path(job, file)
    check_consistency(job, file)
    return job


def resolve_python_path(job: Job, file: str | Path) -> None:
    """Make ``client.python_path`` absolute against the job file's folder (the current directory
    for a job without a file), once, on the driver: the code a job names usually sits beside it,
    and a worker process starts in a directory of Parsl's choosing, where a relative path would
    name something else. An absolute path is kept as written (on a remote site it is that site's)."""
    if job.client is None or not job.client.python_path:
        return
    base = Path(file).expanduser().parent  # "<job>" (no file): "."
    paths = [Path(d).expanduser() for d in job.client.python_path]
    job.client.python_path = [str(p if p.is_absolute() else (base / p).resolve()) for p in paths]


def load_job(path: str | Path, overrides: list[str] | None = None) -> Job:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, "", "job file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(p, "", f"not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    job = parse_job(raw, p, overrides)
    return job

