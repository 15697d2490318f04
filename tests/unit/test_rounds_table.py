"""The rounds table: a Parquet dataset of fixed-size parts that every reader opens as one table,
written per round without rewriting finished parts, restored from round files, converted from the
old one-file layout."""

from __future__ import annotations

from collections import OrderedDict

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist import table as tbl
from fedgrid.flow.persist.table import RoundsTable, read_rows, reconcile_rows, rows_path


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch):
    monkeypatch.setattr(tbl, "SEGMENT", 3)


def _row(r: int, **extra) -> dict:
    return {"round": r, "seconds": float(r), "participants": [r], "clients_ok": 1,
            "updates": [{"client": r, "site": "a", "examples": 10, "metrics": [{"name": "mae", "value": 0.5}]}],
            "failures": [{"client": 9, "site": "x", "reason": "boom"}] if r == 2 else [], **extra}


def _round_file(run_dir, r: int) -> None:
    ckpt.write_round(run_dir, ckpt.RoundState(round=r, params=OrderedDict(w=np.zeros(2)), row=_row(r)))


def _parts(run_dir) -> list[str]:
    return sorted(p.name for p in rows_path(run_dir).glob("part-*.parquet"))


def test_rows_go_to_parts_of_fixed_rounds_and_readers_see_one_table(tmp_path):
    t = RoundsTable.open(tmp_path, 0)
    for r in range(1, 8):
        t.append(_row(r))
    assert _parts(tmp_path) == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert pq.read_table(rows_path(tmp_path) / "part-000001.parquet").column("round").to_pylist() == [4, 5, 6]
    assert pq.read_table(rows_path(tmp_path)).column("round").to_pylist() == list(range(1, 8))
    assert pd.read_parquet(rows_path(tmp_path))["round"].tolist() == list(range(1, 8))
    assert pl.read_parquet(rows_path(tmp_path))["round"].to_list() == list(range(1, 8))
    sql = f"select round from '{rows_path(tmp_path)}/*.parquet' order by round"
    assert [r for (r,) in duckdb.sql(sql).fetchall()] == list(range(1, 8))
    assert [r["round"] for r in read_rows(tmp_path)] == list(range(1, 8))
    assert read_rows(tmp_path)[1]["failures"] == [{"client": 9, "site": "x", "reason": "boom"}]
    # the driver holds only the open part, the count and the last row
    assert (t.count, t.last["round"], t.tail.num_rows) == (7, 7, 1)


def test_a_finished_part_is_not_written_again(tmp_path):
    t = RoundsTable.open(tmp_path, 0)
    for r in range(1, 5):
        t.append(_row(r))
    first = rows_path(tmp_path) / "part-000000.parquet"
    before = first.stat().st_mtime_ns, first.stat().st_ino
    t.append(_row(5))
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == before


def test_a_new_metric_column_reaches_every_part(tmp_path):
    """Readers take the first file's schema: a column that only later parts had would vanish."""
    t = RoundsTable.open(tmp_path, 0)
    for r in range(1, 5):
        t.append(_row(r))
    t.append(_row(5, train_mae=0.25))
    t.append(_row(6, train_mae=0.5))
    for name in _parts(tmp_path):
        assert "train_mae" in pq.read_schema(rows_path(tmp_path) / name).names
    got = pq.read_table(rows_path(tmp_path)).column("train_mae").to_pylist()
    assert got == [None, None, None, None, 0.25, 0.5]


def test_open_restores_missing_rows_and_drops_rows_past_the_resume_point(tmp_path):
    t = RoundsTable.open(tmp_path, 0)
    for r in range(1, 6):
        _round_file(tmp_path, r)
        if r != 2:  # a crash between round 2's file and its row
            t.append(_row(r))
    assert [r["round"] for r in reconcile_rows(tmp_path, 5)] == [1, 2, 3, 4, 5]
    again = RoundsTable.open(tmp_path, 4)  # round 5's file was torn: it will be trained again
    assert [r["round"] for r in read_rows(tmp_path)] == [1, 2, 3, 4]
    assert read_rows(tmp_path)[1]["failures"] == [{"client": 9, "site": "x", "reason": "boom"}]
    assert (again.count, again.last["round"], again.tail.num_rows) == (4, 4, 1)
    again.append(_row(5, seconds=50.0))
    assert read_rows(tmp_path)[-1]["seconds"] == 50.0


def test_an_unreadable_part_is_rebuilt_from_the_round_files(tmp_path):
    t = RoundsTable.open(tmp_path, 0)
    for r in range(1, 5):
        _round_file(tmp_path, r)
        t.append(_row(r))
    (rows_path(tmp_path) / "part-000000.parquet").write_bytes(b"torn")
    assert [r["round"] for r in read_rows(tmp_path)] == [4]  # read-only readers skip it, with a warning
    RoundsTable.open(tmp_path, 4)
    assert [r["round"] for r in read_rows(tmp_path)] == [1, 2, 3, 4]


def test_a_one_file_table_of_an_older_fedgrid_is_converted(tmp_path):
    rows = [_row(r) for r in range(1, 5)]
    pq.write_table(tbl._to_table(rows, tbl.rows_schema([])), rows_path(tmp_path))
    assert [r["round"] for r in read_rows(tmp_path)] == [1, 2, 3, 4]  # readable before conversion
    t = RoundsTable.open(tmp_path, 4)
    assert rows_path(tmp_path).is_dir() and _parts(tmp_path) == ["part-000000.parquet", "part-000001.parquet"]
    assert not (tmp_path / "rounds.parquet.old").exists()
    t.append(_row(5))
    assert [r["round"] for r in read_rows(tmp_path)] == [1, 2, 3, 4, 5]


def test_a_conversion_cut_short_is_finished_next_time(tmp_path):
    """Killed after the old file was moved aside, before the new folder got its name."""
    rows = [_row(r) for r in range(1, 3)]
    pq.write_table(tbl._to_table(rows, tbl.rows_schema([])), tmp_path / "rounds.parquet.old")
    (tmp_path / ".rounds.parquet.new").mkdir()
    assert [r["round"] for r in read_rows(tmp_path)] == [1, 2]
    RoundsTable.open(tmp_path, 2)
    assert [r["round"] for r in read_rows(tmp_path)] == [1, 2]
    assert not (tmp_path / "rounds.parquet.old").exists() and not (tmp_path / ".rounds.parquet.new").exists()
