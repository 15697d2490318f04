"""The exported model (`fedgrid export RUN_DIR [--round N] --format safetensors|torch|peft`, and
what a finished run's trackers keep): the global model, for use outside fedgrid.

The file holds the model's ``state_dict`` exactly as the round checkpoint has it (names, dtypes,
shapes, 0-d tensors such as BatchNorm's ``num_batches_tracked`` included), so
``model.load_state_dict(...)`` takes it as is:

- safetensors: ``safetensors.torch.load_file(path)``. No pickle, so it is safe to load from a
  file someone else wrote; the run's facts ride in its header metadata. (The format stores its
  tensors sorted, not in ``state_dict`` order; the ``.json``'s ``params`` keeps that order.)
- torch: ``torch.load(path, weights_only=True)``, a plain dict of tensors.

A ``.json`` beside either says what the file is: the job and round; the client that trained it
(``client``: the job's ``client:`` block, its ``module:Class`` path and options; or fedgrid's
built-in client and its model block, with how to rebuild that architecture with
``fedgrid.apps.models.build``); for a fine-tuning run the frozen base the params belong to (name,
path, sha256); every number of the round's row in the rounds table (``metrics``: test,
``train_*``, ``fed_*``, the client's own metric columns, ``dp_*``, counts, bytes and seconds; null
where the round has none); and each tensor's name, dtype and shape in ``state_dict`` order
(``params``).

- peft (a LoRA run of fedgrid.apps.llm): a directory with ``adapter_model.safetensors`` and
  ``adapter_config.json``, which ``peft.PeftModel.from_pretrained(base_model, path)`` loads, and
  ``fedgrid.json``, the same description.

``--client N`` (a run with a ``personal:`` block) writes client N's own model instead, in any
format: the round's global params with the client's personal layers (FedBN, FedPer) in place, or
under Ditto the client's whole personal model, as the client evaluates it (apps/train.py
``evaluate_client``). Neither is in the checkpoint: the checkpoint names the client's state
version (``profiles``), and its object is read from the run's store area, so the store must be
reachable from here. The ``.json`` then also holds ``personalized`` (client, state digest,
personal layers, whether the params are Ditto's model).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedgrid import __version__
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist.table import ROWS_SCHEMA, rows_path

FORMATS = {"safetensors": ".safetensors", "torch": ".pt", "peft": ""}

# The numpy dtypes each format stores as themselves. Anything else is refused by name rather than
# cast (or left to fail inside the writer with a traceback and a half-written file).
_PLAIN = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                    "float16", "float32", "float64", "complex64"})
_HOLDS = {"safetensors": _PLAIN, "peft": _PLAIN, "torch": _PLAIN | {"complex128"}}

Params = OrderedDict[str, np.ndarray]


def load_round(run_dir: Path, rnd: int | None = None) -> ckpt.RoundState:
    """Round `rnd` (default: the newest that verifies); ValueError names the rounds there are."""
    if rnd is None:
        state, _ = ckpt.latest_valid(run_dir, quarantine=False)
        if state is None:
            raise ValueError(f"{run_dir}: no round checkpoint found (rounds/round-*.arrow)")
        return state
    path = ckpt.round_path(run_dir, rnd)
    if not path.exists():
        have = [r for r, _ in ckpt.round_files(run_dir)]
        span = f"{have[0]}..{have[-1]}" if have else "none"
        raise ValueError(f"{run_dir}: round {rnd} has no checkpoint (rounds on disk: {span}; "
                         f"checkpoint.keep may have pruned it)")
    try:
        return ckpt.read_round(path)
    except ckpt.CheckpointError as e:
        raise ValueError(f"{path}: {e}") from None


def round_row(run_dir: Path, state: ckpt.RoundState) -> tuple[dict[str, Any], pa.Schema]:
    """The exported round's row and the schema of the table it is a row of.

    The rounds table is what users read (every client-metric column, null in rounds that lack
    it); the checkpoint's copy of the row is checksummed and also holds a row the table lost (a
    crash between the two writes) or never has (round 0). So the table's row comes first and
    the checkpoint's non-null values go over it. A table that cannot be read only costs its
    null columns: the export goes on from the checkpoint.
    """
    table_row: dict[str, Any] = {}
    schema = ROWS_SCHEMA
    path = rows_path(run_dir)
    if state.round > 0 and path.exists():
        try:
            # a filtered dataset read: the other parts' rows are skipped by their footers' statistics,
            # and the dot-named temp files of an unfinished write are ignored as by every dataset reader
            got = pq.read_table(path, filters=[("round", "=", state.round)])
            if got.num_rows:
                schema, table_row = got.schema, got.to_pylist()[-1]
        except (pa.ArrowException, OSError, ValueError):
            pass
    row = dict(table_row)
    row.update((k, v) for k, v in state.row.items() if v is not None or k not in row)
    return row, schema


def _finite(v: Any) -> Any:
    """`v` as strict JSON takes it: NaN and infinities become None (json.dumps would write a bare
    NaN, which JSON readers other than Python's refuse), numpy scalars plain Python."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def row_metrics(row: dict[str, Any], schema: pa.Schema = ROWS_SCHEMA) -> dict[str, Any]:
    """Every number of a round's row, as the trackers see one (flow/tracking/values.py): its
    lists of clients, updates and failures are not metrics, their counts, bytes and seconds are.
    Unlike a tracker's, a numeric column the round left empty (no evaluation this round, a client
    metric only other rounds reported) stays, as null: the reader learns it exists."""
    numeric = {f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)}
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k == "round" or isinstance(v, bool):
            continue
        if isinstance(v, int | float | np.integer | np.floating) or (v is None and k in numeric):
            out[k] = _finite(v)
    return out


def client_block(job: dict[str, Any]) -> dict[str, Any]:
    """Which client trained the params: the job's whole ``client:`` block (``module:Class``, its
    options, and whatever else the block says about loading it), or fedgrid's built-in client with
    the job's model block (the only case in which the model block says what the params are)."""
    spec = job.get("client")
    if spec:
        return {"builtin": False, **spec, "options": spec.get("options") or {}}
    from fedgrid.apps.builtin import PATH

    model = job.get("model") or {}
    return {"builtin": True, "path": PATH,
            "model": {"name": model.get("name"), "kwargs": model.get("kwargs") or {}}}


def describe(state: ckpt.RoundState, row: dict[str, Any] | None = None,
             schema: pa.Schema = ROWS_SCHEMA) -> dict[str, Any]:
    """What the exported file is: job, round, client (and for the built-in client its model and how
    to rebuild it), frozen base, and the round's metrics. `row` defaults to the checkpoint's."""
    from fedgrid.apps import datasets

    job = state.job
    row = state.row if row is None else row
    client = client_block(job)
    info: dict[str, Any] = {"fedgrid_version": __version__, "job": job.get("name"), "round": state.round,
                            "client": client}
    if client["builtin"]:
        info.update(model=client["model"]["name"], model_kwargs=client["model"]["kwargs"])
    if row.get("base_sha256"):
        info["base"] = {"name": row.get("base_name"), "sha256": row["base_sha256"],
                        "path": ((job.get("client") or {}).get("options") or {}).get("base")}
    info.update(test_accuracy=row.get("test_accuracy"), test_loss=row.get("test_loss"),
                metrics=row_metrics(row, schema))
    if client["builtin"]:  # a job's own client builds its own architecture: the data's shape says nothing
        try:
            shape, classes = datasets.meta(job["data"], None)
            info.update(input_shape=list(shape), num_classes=classes)
        except (KeyError, OSError, ValueError, TypeError):  # data not reachable from here: leave them out
            pass
        if "input_shape" in info:
            info["rebuild"] = (f"fedgrid.apps.models.build({info['model']!r}, {tuple(info['input_shape'])}, "
                               f"{info['num_classes']}, {info['model_kwargs']!r})")
    return _finite(info)


def _exact(a: np.ndarray) -> np.ndarray:
    """`a` in C order, little-endian, with its own shape and dtype. Not np.ascontiguousarray: it
    returns at least one dimension, which turned a 0-d ``num_batches_tracked`` into shape (1,)."""
    a = np.asarray(a)
    if a.dtype.byteorder == ">":  # the same values in the byte order both formats require
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")


def _check_dtypes(params: dict[str, np.ndarray], fmt: str) -> None:
    for name, a in params.items():
        if a.dtype.name not in _HOLDS[fmt]:
            raise ValueError(f"--format {fmt}: {name} has dtype {a.dtype.name}, which the format cannot hold "
                             f"without a cast (it holds {', '.join(sorted(_HOLDS[fmt]))})")


def _listing(params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each tensor's name, dtype and shape in state_dict order, to check a loaded file against."""
    return [{"name": k, "dtype": a.dtype.name, "shape": list(a.shape)} for k, a in params.items()]


def _dumps(v: Any, **kw: Any) -> str:
    return json.dumps(v, allow_nan=False, **kw)


def store_areas(run_dir: Path, job: dict[str, Any]) -> list[str]:
    """Where the run's store area may be, most likely first. The area's name holds a hash of the
    run directory's path at run time (dataplane.run_area), so a run directory moved since (its
    default store moved with it) is also looked for under the path the job recorded."""
    from fedgrid.flow.config import Job
    from fedgrid.flow.persist import dataplane

    url = dataplane.store_url((job.get("store") or {}).get("url") or str(run_dir / "store"))
    # run_area reads only the name; the recorded job is not validated again, so a job an older
    # fedgrid wrote still names its area
    named = Job.model_construct(name=job.get("name"))
    dirs = [run_dir.resolve()]
    recorded = (job.get("checkpoint") or {}).get("dir")
    if recorded:
        try:
            was = Path(str(recorded).format(name=job.get("name")))
        except (KeyError, IndexError, ValueError):  # a dir template this fedgrid does not fill
            was = None
        if was is not None and was.is_absolute() and was.resolve() not in dirs:
            dirs.append(was.resolve())
    return list(dict.fromkeys(dataplane.run_area(url, named, d) for d in dirs))


def client_model(run_dir: Path, state: ckpt.RoundState, client: int) -> tuple[Params, dict[str, Any]]:
    """Client `client`'s own model after round `state.round` and the sidecar's ``personalized``
    block. The rule is evaluate_client's (apps/train.py), so the file is the model the client's
    ``personal_*`` metrics were measured on: Ditto's whole personal model when the client has
    one (a param it lacks is the global one), else the global params with the client's
    personal layers in place."""
    from fedgrid.apps import state as codec
    from fedgrid.apps.sitestate import FOLDER, Kept
    from fedgrid.apps.store import Ref, fetch
    from fedgrid.flow.clients.profiles import state_of

    job = state.job
    spec = job.get("personal") or {}
    if not (spec.get("layers") or spec.get("ditto")):
        raise ValueError(f"--client: run {job.get('name')!r} keeps no personal layers or model: nothing to "
                         f"export for a client (its global model is every client's model; export without --client)")
    clients = int((job.get("data") or {}).get("clients") or 0)
    if not 0 <= client < clients:
        raise ValueError(f"--client {client}: no such client in run {job.get('name')!r} "
                         f"(its clients are 0..{clients - 1})")
    try:
        have, _ = state_of(state.profiles, client)
    except IndexError:  # profiles shorter than the job's clients: nothing recorded for this one
        have = None
    if have is None:
        raise ValueError(f"client {client} has not trained yet in round {state.round} (no accepted update of it "
                         f"up to that round)")
    sha, key = have["sha256"], f"{FOLDER.format(client=client)}/{have['sha256']}"
    areas = store_areas(run_dir, job)
    tried: list[str] = []
    kept = None
    for area in areas:
        try:
            kept = Kept.of(codec.decode(fetch(Ref(f"{area}/{key}", sha, int(have["nbytes"])))))
            break
        except Exception as e:  # noqa: BLE001 - fsspec backends raise their own types (no credentials, no s3fs)
            tried.append(" ".join(f"{type(e).__name__}: {e}".split()))  # one line, whatever the backend said
    if kept is None:
        raise ValueError(f"client {client}'s state (round {state.round}, sha256 {sha[:12]}) cannot be read; looked "
                         f"in {' and '.join(areas)}: {'; '.join(tried)} (a site keeps only each client's two newest "
                         f"versions: an older round's may be gone)")
    ditto = bool(spec.get("ditto") and kept.ditto)
    own = kept.ditto if ditto else kept.personal
    for name, a in own.items():
        want = state.params.get(name)
        if want is None or a.shape != want.shape:
            got = ("not a param of the model" if want is None
                   else f"shape {list(a.shape)}, the model's {list(want.shape)}")
            raise ValueError(f"client {client}'s state (sha256 {sha[:12]}) does not fit round {state.round}'s "
                             f"model: {'ditto' if ditto else 'personal'} {name}: {got}")
    params = OrderedDict((k, own.get(k, g)) for k, g in state.params.items())
    block = {"client": client, "state_sha256": sha,
             "personal_layers": [k for k in state.params if k in kept.personal], "ditto": ditto}
    return params, block


def export_model(run_dir: Path, rnd: int | None = None, fmt: str = "safetensors", out: Path | None = None,
                 client: int | None = None) -> Path:
    """Write the global model of round `rnd` (default newest), or with `client` that client's
    personalized model, and its .json; returns the model file. Written into the run directory,
    it is made as the run's own files are (owner-only, or read-only for its share group)."""
    from fedgrid.flow.persist.runlock import share_like_run, writing_in

    with writing_in(run_dir, out):
        path = _export_model(run_dir, rnd, fmt, out, client)
        share_like_run(path, run_dir)
    return path


def _export_model(run_dir: Path, rnd: int | None, fmt: str, out: Path | None, client: int | None) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {sorted(FORMATS)}, got {fmt!r}")
    state = load_round(run_dir, rnd)
    params, personalized = state.params, None
    if client is not None:
        params, personalized = client_model(run_dir, state, client)
    params = OrderedDict((k, _exact(v)) for k, v in params.items())
    info = describe(state, *round_row(run_dir, state))
    if personalized is not None:
        info["personalized"] = personalized
    mine = f"-client-{client:05d}" if client is not None else ""
    out = out or run_dir / "export" / (f"{'adapter' if fmt == 'peft' else 'model'}-round-{state.round:06d}{mine}"
                                       f"{FORMATS[fmt]}")
    if fmt == "peft":
        return _peft(state, params, info, out)
    _check_dtypes(params, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file(params, str(out), metadata={k: _dumps(v) for k, v in info.items()})
    else:
        import torch

        # a copy each: torch.from_numpy shares memory and warns on the read-only arrays of a checkpoint
        torch.save(OrderedDict((k, torch.from_numpy(v.copy())) for k, v in params.items()), out)
    sidecar = {**info, "file": out.name, "format": fmt, "params": _listing(params)}
    out.with_suffix(".json").write_text(_dumps(sidecar, indent=1) + "\n")
    return out


def _peft(state: ckpt.RoundState, params: dict[str, np.ndarray], info: dict[str, Any], out: Path) -> Path:
    """The adapter as PEFT saves one: its weights under PEFT's names and its LoraConfig."""
    client = state.job.get("client") or {}
    if not str(client.get("path", "")) or "base" not in info:
        raise ValueError("--format peft: this run did not fine-tune an adapter on a base (a fedgrid.apps.llm client)")
    try:
        from safetensors.numpy import save_file

        from fedgrid.apps.llm import adapter_state, lora_config, options
    except ImportError as e:
        raise ValueError(f"--format peft needs the llm extra: pip install 'fedgrid[llm]' ({e})") from None
    try:
        opts = options(client.get("options") or {})
    except ValueError as e:
        raise ValueError(f"--format peft: the run's client.options: {e}") from None
    _check_dtypes(params, "peft")
    # PEFT's names from adapter_state, the arrays from params: adapter_state passes each through
    # np.ascontiguousarray, which would make a 0-d tensor 1-d
    weights = OrderedDict(zip(adapter_state(params), params.values(), strict=True))
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    lora_config(opts, info["base"]["path"]).save_pretrained(str(out))
    sidecar = {**info, "file": "adapter_model.safetensors", "format": "peft", "params": _listing(weights)}
    (out / "fedgrid.json").write_text(_dumps(sidecar, indent=1) + "\n")
    return out
