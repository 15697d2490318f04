"""The rounds table, ``rounds.parquet``: one row per round, as a Parquet dataset of fixed-size parts.

Layout::

    rounds.parquet/part-000000.parquet   rounds 1..100
    rounds.parquet/part-000001.parquet   rounds 101..200, and so on

A run of 10,000 rounds must cost the same per round at its end as at its start, and the driver's
memory must not grow with the rounds. One Parquet file cannot be appended to, so rewriting it whole
each round costs O(rounds) a round (seconds at round 10,000 with 100 clients a round) and needs
every row in memory. Here a round rewrites only its own part (at most ``SEGMENT`` rows, kept in
memory as Arrow), and the rows of finished parts are never held again.

Every reader opens the folder as one table: ``pyarrow.parquet.read_table``, ``pandas.read_parquet``
and ``polars.read_parquet`` take the folder, duckdb ``'rounds.parquet/*.parquet'``. Part names are
zero-padded so the readers' sorted order is round order, and every part has the same schema
(``ROWS_SCHEMA`` plus one column per client metric): when a new metric column appears, the
finished parts are rewritten once, so no reader drops it by taking the first file's schema.

A part belongs to a fixed range of rounds (not to positions), so restoring a lost row or dropping
rows past the resume point rewrites only the parts those rounds live in. Each part is written
atomically (temp name, fsync, rename); temp names start with a dot, which dataset readers skip.
A rounds table from before this layout (one file) is converted on the next run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fedgrid.flow.persist.checkpoint import CheckpointError, atomic_write, read_round, round_files

log = logging.getLogger("fedgrid")

SEGMENT = 100  # rounds per part: small enough to rewrite each round, few enough files to open

Row = dict[str, Any]

_STALE = pa.list_(pa.struct([("client", pa.int64()), ("staleness", pa.int64())]))
_REASONS = pa.list_(pa.struct([("client", pa.int64()), ("site", pa.string()), ("reason", pa.string())]))
_METRICS = pa.list_(pa.struct([("name", pa.string()), ("value", pa.float64())]))
ROWS_SCHEMA = pa.schema([
    ("round", pa.int64()), ("attempt", pa.int64()), ("started_at", pa.float64()), ("seconds", pa.float64()),
    ("test_accuracy", pa.float64()), ("test_loss", pa.float64()),
    ("train_loss", pa.float64()), ("train_accuracy", pa.float64()),
    ("clients_selected", pa.int64()), ("clients_ok", pa.int64()), ("clients_failed", pa.int64()),
    ("participants", pa.list_(pa.int64())),
    ("failures", _REASONS),
    ("skipped", _REASONS),  # left out by deadline-aware selection, with why
    ("carried", _STALE),  # late updates of earlier rounds that joined this one (round.late=carry)
    ("reused", _STALE),  # absent clients whose last update stood in (round.absent=reuse)
    ("updates", pa.list_(pa.struct([
        ("client", pa.int64()), ("site", pa.string()), ("examples", pa.int64()), ("loss", pa.float64()),
        ("accuracy", pa.float64()), ("train_s", pa.float64()), ("queue_s", pa.float64()),
        ("worker", pa.string()), ("batch_job", pa.string()),  # host:pid, and the Slurm/PBS job it ran in
        ("steps", pa.int64()), ("staleness", pa.int64()), ("bytes_up", pa.int64()),
        # seconds to set up (data, model, global params) and whether it had to build the model itself
        ("load_s", pa.float64()), ("cold", pa.bool_()), ("metrics", _METRICS)]))),
    ("examples", pa.int64()), ("bytes_down", pa.int64()), ("bytes_up", pa.int64()), ("bytes_by_ref", pa.int64()),
    ("bytes_in_sites", pa.int64()),  # round.aggregate: site: the clients' update bytes that stayed in their sites
    ("site_partials", pa.list_(pa.struct([  # ... and per site: its partial, what stayed, what crossed
        ("site", pa.string()), ("clients", pa.int64()), ("examples", pa.int64()), ("bytes_in_site", pa.int64()),
        ("bytes_up", pa.int64()), ("seconds", pa.float64())]))),
    ("gather_s", pa.float64()), ("aggregate_s", pa.float64()), ("eval_s", pa.float64()),
    ("client_train_s_max", pa.float64()), ("client_queue_s_max", pa.float64()),
    # federated evaluation (flow/rounds/fedeval.py): every client's metrics, who failed, how long;
    # the means, minima and 10th percentiles per metric are fed_<name>[_min|_p10] columns
    ("fed_clients", pa.list_(pa.struct([("client", pa.int64()), ("site", pa.string()), ("examples", pa.int64()),
                                        ("metrics", _METRICS)]))),
    ("fed_failures", _REASONS), ("fed_s", pa.float64()), ("fed_examples", pa.int64()),
    # privacy: this round's noise multiplier and sampling rate, and epsilon after it (flow/privacy/dp.py)
    ("dp_noise", pa.float64()), ("dp_sample_rate", pa.float64()), ("dp_epsilon", pa.float64()),
    # fine-tuning: the frozen base the round's (trainable) params belong to (apps/client.py Base)
    ("base_name", pa.string()), ("base_sha256", pa.string()),
])

METRIC_PREFIXES = ("train_", "fed_")


def rows_path(run_dir: Path) -> Path:
    return run_dir / "rounds.parquet"


def part_of(rnd: int) -> int:
    return (rnd - 1) // SEGMENT


def _part_path(run_dir: Path, k: int) -> Path:
    return rows_path(run_dir) / f"part-{k:06d}.parquet"


def extra_columns(rows: list[Row]) -> list[str]:
    """The client-metric columns (``train_<name>``, ``fed_<name>``) the rows carry."""
    return sorted({k for r in rows for k in r if k.startswith(METRIC_PREFIXES) and k not in ROWS_SCHEMA.names})


def rows_schema(extra: list[str]) -> pa.Schema:
    """ROWS_SCHEMA plus one float column per client metric, so pandas, polars and duckdb read a
    user's metrics as plain columns."""
    return ROWS_SCHEMA if not extra else pa.schema([*ROWS_SCHEMA, *((k, pa.float64()) for k in extra)])


def _to_table(rows: list[Row], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


# -- reading --------------------------------------------------------------------------------------


def _legacy(run_dir: Path) -> Path | None:
    """The one-file table of an older fedgrid (or its copy mid-conversion), if that is what is there."""
    p = rows_path(run_dir)
    if p.is_file():
        return p
    old = run_dir / "rounds.parquet.old"
    return old if old.is_file() and not p.exists() else None


def _read_file(p: Path) -> list[Row]:
    try:
        return pq.read_table(p).to_pylist()
    except (pa.ArrowInvalid, OSError) as e:
        log.warning("rounds table part %s unreadable (%s); its rows come from the round files", p, e)
        return []


def read_parts(run_dir: Path) -> dict[int, list[Row]]:
    """The rows on disk, by part; an unreadable part reads as empty (reconcile restores its rows)."""
    if (one := _legacy(run_dir)) is not None:
        parts: dict[int, list[Row]] = {}
        for r in _read_file(one):
            parts.setdefault(part_of(r["round"]), []).append(r)
        return parts
    d = rows_path(run_dir)
    if not d.is_dir():
        return {}
    out = {}
    for p in sorted(d.glob("part-*.parquet")):
        try:
            out[int(p.stem.split("-")[1])] = _read_file(p)
        except ValueError:
            continue
    return out


def read_rows(run_dir: Path) -> list[Row]:
    """Every row on disk, in round order."""
    return [r for _, rows in sorted(read_parts(run_dir).items()) for r in rows]


def reconcile_rows(run_dir: Path, upto: int) -> list[Row]:
    """Rows for rounds 1..upto: the table's, with any missing row restored from its round file
    (a crash between the round file and the table, or a lost part). Reads only."""
    return _reconcile(read_parts(run_dir), run_dir, upto)


def _reconcile(parts: dict[int, list[Row]], run_dir: Path, upto: int) -> list[Row]:
    rows = {r["round"]: r for part in parts.values() for r in part if 0 < r["round"] <= upto}
    for r, path in round_files(run_dir):
        if 0 < r <= upto and r not in rows:
            try:
                rows[r] = read_round(path).row
            except CheckpointError:
                continue
    return [rows[k] for k in sorted(rows)]


# -- writing --------------------------------------------------------------------------------------


def _write_part(run_dir: Path, k: int, table: pa.Table) -> None:
    atomic_write(_part_path(run_dir, k), lambda tmp: pq.write_table(table, tmp))


def _convert_legacy(run_dir: Path) -> None:
    """One file → parts. Every step leaves a state the reader understands: the new folder is
    complete before the old file is moved aside, and the old file goes only once the folder has
    its name."""
    one = _legacy(run_dir)
    if one is None:
        return
    rows = _read_file(one)
    new = run_dir / ".rounds.parquet.new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    schema = rows_schema(extra_columns(rows))
    by_part: dict[int, list[Row]] = {}
    for r in rows:
        by_part.setdefault(part_of(r["round"]), []).append(r)
    for k, part in by_part.items():
        atomic_write(new / _part_path(run_dir, k).name, lambda tmp, p=part: pq.write_table(_to_table(p, schema), tmp))
    old = run_dir / "rounds.parquet.old"
    if one != old:
        os.replace(one, old)
    os.replace(new, rows_path(run_dir))
    old.unlink()


class RoundsTable:
    """The rounds table of a running driver: appends a row by rewriting only its part.

    Holds the open part's rows (as Arrow), the number of rows and the last row; never the rest.
    """

    def __init__(self, run_dir: Path, rows: list[Row], extra: list[str]):
        self.run_dir, self.extra = run_dir, extra
        self.count = len(rows)
        self.last: Row = rows[-1] if rows else {}
        self.part = part_of(self.last["round"]) if rows else 0
        self.tail = _to_table([r for r in rows if part_of(r["round"]) == self.part], self.schema)

    @property
    def schema(self) -> pa.Schema:
        return rows_schema(self.extra)

    @classmethod
    def open(cls, run_dir: Path, upto: int) -> RoundsTable:
        """The table for a run resuming after round `upto`: converted from one file if it is old,
        rows restored from round files where missing and dropped past `upto`, so what is on disk
        is exactly rounds 1..upto. Only the parts that differ are written."""
        _convert_legacy(run_dir)
        disk = read_parts(run_dir)
        rows = _reconcile(disk, run_dir, upto)
        table = cls(run_dir, rows, extra_columns(rows))
        want: dict[int, list[Row]] = {}
        for r in rows:
            want.setdefault(part_of(r["round"]), []).append(r)
        for k in sorted(set(disk) | set(want)):
            if k not in want:
                _part_path(run_dir, k).unlink(missing_ok=True)
            elif disk.get(k) != want[k] or pq.read_schema(_part_path(run_dir, k)) != table.schema:
                _write_part(run_dir, k, _to_table(want[k], table.schema))
        return table

    def append(self, row: Row) -> None:
        """Write round `row` (the next round) into the table."""
        rnd = int(row["round"])
        if (new := [c for c in extra_columns([row]) if c not in self.extra]):
            self._widen(new)
        if part_of(rnd) != self.part:
            self.part, self.tail = part_of(rnd), self.schema.empty_table()
        self.tail = pa.concat_tables([self.tail, _to_table([row], self.schema)])
        _write_part(self.run_dir, self.part, self.tail)
        self.count, self.last = self.count + 1, row

    def _widen(self, new: list[str]) -> None:
        """A metric column no part has yet: every finished part is rewritten with it (null in the
        old rows), once per new column, so all parts keep one schema."""
        self.extra = sorted([*self.extra, *new])
        for k, rows in read_parts(self.run_dir).items():
            if k != self.part:
                _write_part(self.run_dir, k, _to_table(rows, self.schema))
        self.tail = _to_table(self.tail.to_pylist(), self.schema)
