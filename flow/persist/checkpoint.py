"""Checkpoints: one Arrow IPC file per round plus a rounds table, written so no round is ever lost.

Layout of a run directory::

    rounds/round-000000.arrow   initial model (round 0), then one file per finished round
    rounds.parquet/             one row per round: metrics, participants, failures, bytes, timings
                                (flow/persist/table.py)
    fedgrid.log                 the driver's log

A round file is a table of arrays — ``section`` (params | strategy | profiles), ``name``, ``dtype``,
``shape`` and the raw little-endian bytes — with the round number, job fingerprint, RNG state (JSON)
and the round's metrics row in the schema metadata, and a checksum over all of it: a sha256 over the
metadata and, per array, its section, name, dtype, shape, size and CRC32. Arrays come back
bit-exact; nothing is pickled, so reading a checkpoint never runs code.

Speed: each array is its own record batch whose data buffer *is* the numpy array (no copy), and the
per-array CRC32s run on a small thread pool (zlib releases the GIL), so a round writes at close to
the disk's speed (bench/throughput.py). The CRC detects torn and corrupted files, which is what the
checksum is for; a v1 file (one sha256 over every byte) is still read and verified.

Writes go to a temporary name, are fsynced, renamed into place and the directory fsynced: a crash
leaves either the old state or the new one. On load the checksum is verified; a torn or corrupted
file is moved to ``rounds/corrupt/`` with the reason and the run resumes from the newest valid round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from fedgrid.apps.files import atomic_write  # (where it lives: site code writes atomically too)

FORMAT = "fedgrid.round.v2"
FORMATS = ("fedgrid.round.v1", FORMAT)  # v1: one sha256 over all data; v2: a CRC32 per array
log = logging.getLogger("fedgrid")

Arrays = dict[str, np.ndarray]

_SCHEMA = pa.schema([
    ("section", pa.string()), ("name", pa.string()), ("dtype", pa.string()),
    ("shape", pa.list_(pa.int64())), ("data", pa.large_binary()),
])

class CheckpointError(Exception):
    """A round file that cannot be trusted (torn, corrupted, or of another format)."""


@dataclass
class RoundState:
    """Everything needed to continue after `round`."""

    round: int
    params: Arrays
    strategy: Arrays = field(default_factory=OrderedDict)
    profiles: Arrays = field(default_factory=OrderedDict)
    memory: Arrays = field(default_factory=OrderedDict)  # round.absent=reuse: clients' last deltas
    rng: Mapping[str, Any] = field(default_factory=dict)  # the driver's BitGenerator.state
    row: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    job: dict[str, Any] = field(default_factory=dict)
    # the job's round target and the round it was set at, every time it changed ([[0, 10], [10, 13]]
    # after `--rounds +3` at round 10): a schedule over rounds continues from where it was
    horizon: list[list[int]] = field(default_factory=list)


def round_path(run_dir: Path, r: int) -> Path:
    return run_dir / "rounds" / f"round-{r:06d}.arrow"


_CRC_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedgrid-crc")


def _crc(data: memoryview) -> int:
    return zlib.crc32(data)


def _rows(table: pa.Table) -> Iterator[tuple[str, str, str, list[int], memoryview]]:
    """(section, name, dtype, shape, data) per array; data is a view into the table's buffer."""
    for batch in table.to_batches():
        cols = [batch.column(c).to_pylist() for c in _SCHEMA.names[:4]]
        data = batch.column("data")
        offsets = np.frombuffer(data.buffers()[1], dtype=np.int64)[data.offset:data.offset + len(data) + 1]
        buf = memoryview(data.buffers()[2]) if data.buffers()[2] is not None else memoryview(b"")
        for i, (sec, name, dt, shape) in enumerate(zip(*cols, strict=True)):
            yield sec, name, dt, shape, buf[offsets[i]:offsets[i + 1]]


def _digest(rows: list[tuple[str, str, str, list[int], memoryview]], meta: dict[bytes, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(meta):
        if k != b"fedgrid.sha256":
            h.update(k + b"=" + meta[k] + b"\n")
    if meta.get(b"fedgrid.format") == FORMATS[0].encode():  # v1: every byte through sha256
        for sec, name, dt, shape, data in rows:
            h.update(f"{sec}|{name}|{dt}|{shape}|{len(data)}\n".encode())
            h.update(data)
        return h.hexdigest()
    crcs = list(_CRC_POOL.map(_crc, [r[4] for r in rows]))
    for (sec, name, dt, shape, data), crc in zip(rows, crcs, strict=True):
        h.update(f"{sec}|{name}|{dt}|{shape}|{len(data)}|{crc:08x}\n".encode())
    return h.hexdigest()


def _sections(state: RoundState) -> tuple[list[pa.RecordBatch], list]:
    """One record batch per array, its data buffer the array's own memory; and the digest rows."""
    batches, rows = [], []
    for sec, arrays in (("params", state.params), ("strategy", state.strategy), ("profiles", state.profiles),
                        ("memory", state.memory)):
        for name, a in arrays.items():
            a = np.asarray(a)  # not ascontiguousarray: it turns 0-d arrays into 1-d
            if not a.flags.c_contiguous:
                a = a.copy(order="C")
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            view = a.reshape(-1).data.cast("B") if a.size else memoryview(b"")
            data = pa.LargeBinaryArray.from_buffers(
                pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, a.nbytes], np.int64)), pa.py_buffer(view)])
            batches.append(pa.record_batch(
                [pa.array([sec]), pa.array([name]), pa.array([a.dtype.str]),
                 pa.array([list(a.shape)], type=pa.list_(pa.int64())), data], schema=_SCHEMA))
            rows.append((sec, name, a.dtype.str, list(a.shape), view))
    return batches, rows


def write_round(run_dir: Path, state: RoundState) -> Path:
    batches, rows = _sections(state)
    meta = {
        b"fedgrid.format": FORMAT.encode(), b"fedgrid.round": str(state.round).encode(),
        b"fedgrid.fingerprint": state.fingerprint.encode(),
        b"fedgrid.rng": json.dumps(state.rng).encode(), b"fedgrid.row": json.dumps(state.row).encode(),
        b"fedgrid.job": json.dumps(state.job, sort_keys=True).encode(),
        b"fedgrid.horizon": json.dumps(state.horizon).encode(),
    }
    meta[b"fedgrid.sha256"] = _digest(rows, meta).encode()
    schema = _SCHEMA.with_metadata(meta)

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as w:
            for b in batches:
                w.write_batch(b)

    path = round_path(run_dir, state.round)
    atomic_write(path, write)
    return path


def _read_table(path: Path) -> pa.Table:
    with pa.memory_map(str(path), "r") as src:
        table = ipc.open_file(src).read_all()
    # every offset and length checked before anything reads through them: a flipped byte in a
    # string column's offsets must be an error here, not a segfault in the driver
    table.validate(full=True)
    return table


def remove_temp_files(run_dir: Path) -> int:
    """Temp files of writes a killed driver never finished (the run lock is held: nobody else
    is writing); returns how many went."""
    n = 0
    for d in (run_dir, run_dir / "rounds", run_dir / "rounds.parquet"):
        for p in d.glob(".*.tmp") if d.is_dir() else ():
            p.unlink(missing_ok=True)
            n += 1
    return n


def read_round(path: Path) -> RoundState:
    """Load and verify one round file; raises CheckpointError when it cannot be trusted."""
    try:
        table = _read_table(path)
    except OSError as e:
        if e.errno is None:  # Arrow's own verdict on the bytes ("Invalid IPC stream"): corrupt
            raise CheckpointError(f"unreadable Arrow file ({e})") from None
        # the operating system failed us (EIO, ESTALE on NFS): the file may be fine, so it is not
        # quarantined; one more try, then the error stops the run with what happened
        time.sleep(1.0)
        try:
            table = _read_table(path)
        except (pa.ArrowException, ValueError) as e2:
            raise CheckpointError(f"unreadable Arrow file ({e2})") from None
        except OSError as e2:
            if e2.errno is not None:
                raise
            raise CheckpointError(f"unreadable Arrow file ({e2})") from None
    except (pa.ArrowException, ValueError) as e:  # (UnicodeDecodeError: garbled metadata)
        raise CheckpointError(f"unreadable Arrow file ({e})") from None
    meta = table.schema.metadata or {}
    if meta.get(b"fedgrid.format", b"") not in {f.encode() for f in FORMATS}:
        raise CheckpointError(f"not a {FORMAT} file")
    try:
        rows = list(_rows(table))
        digest = _digest(rows, meta).encode()
    except (pa.ArrowException, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"malformed round file ({e})") from None
    if digest != meta.get(b"fedgrid.sha256", b""):
        raise CheckpointError("checksum mismatch (file corrupted)")
    out: dict[str, Arrays] = {k: OrderedDict() for k in ("params", "strategy", "profiles", "memory")}
    for sec, name, dt, shape, data in rows:
        out[sec][name] = np.frombuffer(data, dtype=np.dtype(dt)).reshape(shape).copy()
    return RoundState(
        round=int(meta[b"fedgrid.round"]), params=out["params"], strategy=out["strategy"],
        profiles=out["profiles"], memory=out["memory"], rng=json.loads(meta[b"fedgrid.rng"]),
        row=json.loads(meta[b"fedgrid.row"]),
        fingerprint=meta[b"fedgrid.fingerprint"].decode(), job=json.loads(meta[b"fedgrid.job"]),
        horizon=json.loads(meta.get(b"fedgrid.horizon", b"[]")),
    )


def round_files(run_dir: Path) -> list[tuple[int, Path]]:
    d = run_dir / "rounds"
    if not d.is_dir():
        return []
    found = []
    for p in d.glob("round-*.arrow"):
        try:
            found.append((int(p.stem.split("-")[1]), p))
        except ValueError:
            continue
    return sorted(found)


def latest_valid(run_dir: Path, quarantine: bool = True) -> tuple[RoundState | None, list[tuple[Path, str]]]:
    """The newest round that verifies, and the (path, reason) of every newer file that did not."""
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(round_files(run_dir)):
        try:
            return read_round(path), skipped
        except CheckpointError as e:
            skipped.append((path, str(e)))
            if quarantine:
                bad = path.parent / "corrupt"
                bad.mkdir(exist_ok=True)
                os.replace(path, bad / path.name)
    return None, skipped


def prune(run_dir: Path, keep: int, newest: int) -> None:
    """Keep round 0 and the newest `keep` round files (0 keeps all); the rows stay in the table."""
    if keep <= 0:
        return
    for r, path in round_files(run_dir):
        if 0 < r <= newest - keep:
            path.unlink(missing_ok=True)
