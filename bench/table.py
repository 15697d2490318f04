"""The rounds table's cost per round at round 10 and at round 10,000 (issue 16).

    python bench/table.py [--clients 100] [--rounds 10000]

Rows shaped like a real round's (`round_row`: one `updates` entry per client with a metric, the
participants list) for `--clients` clients a round. Measures, on this machine's disk:

- the one-file table of fedgrid before issue 16 (every row rewritten each round, all rows held in
  memory): seconds for the write of round 10 and of round `--rounds`, and the Python memory the
  held rows take at that round (tracemalloc);
- the part-file table (`flow/persist/table.py`): the median and worst append over rounds 1..100
  and over the last 100 rounds, and the memory the table holds at both points. The rounds before
  the last 100 are laid down part by part first (as a long run leaves them), then the table is
  opened as a resumed driver opens it (timed: that is a resume's one-off read).

Writes bench/results/table.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import save_result  # noqa: E402 - bench/ is the script's own folder

from fedgrid.flow.persist import table as tbl


def row(r: int, clients: int) -> dict:
    ups = [{"client": c, "site": f"s{c % 4}", "examples": 500, "loss": 0.3, "accuracy": 0.9, "train_s": 1.2,
            "queue_s": 0.01, "worker": f"node{c % 8}:123", "steps": 40, "staleness": 0, "bytes_up": 4_000_000,
            "load_s": 0.02, "cold": False, "metrics": [{"name": "mae", "value": 0.1}]} for c in range(clients)]
    return {"round": r, "attempt": 1, "started_at": 1.7e9 + r, "seconds": 2.5, "test_accuracy": 0.9,
            "train_loss": 0.3, "clients_selected": clients, "clients_ok": clients, "clients_failed": 0,
            "participants": list(range(clients)), "failures": [], "updates": ups, "examples": 500 * clients,
            "bytes_up": 4_000_000 * clients, "gather_s": 1.5, "aggregate_s": 0.05, "train_mae": 0.1}


def old_write(run_dir: Path, rows: list[dict]) -> float:
    """fedgrid's rounds table before: one Parquet file, every row converted and written each round."""
    schema = tbl.rows_schema(tbl.extra_columns(rows))
    t0 = time.perf_counter()
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, run_dir / "old.parquet")
    return time.perf_counter() - t0


def held_bytes(make) -> int:  # noqa: ANN001 - make() builds what is measured
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = make()
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del kept
    return size


def appends(t: tbl.RoundsTable, first: int, n: int, clients: int) -> list[float]:
    out = []
    for r in range(first, first + n):
        x = row(r, clients)
        t0 = time.perf_counter()
        t.append(x)
        out.append(time.perf_counter() - t0)
    return out


def lay_down(run_dir: Path, upto: int, clients: int) -> None:
    """Rounds 1..upto as finished parts, as a long run leaves them."""
    schema = tbl.rows_schema(["train_mae"])
    one = tbl._to_table([row(1, clients)], schema)
    for k in range(tbl.part_of(upto) + 1):
        lo, hi = k * tbl.SEGMENT + 1, min((k + 1) * tbl.SEGMENT, upto)
        part = pa.concat_tables([one] * (hi - lo + 1))
        part = part.set_column(0, "round", pa.array(range(lo, hi + 1), pa.int64()))
        tbl._write_part(run_dir, k, part)


def summary(xs: list[float]) -> dict:
    return {"median_ms": round(1e3 * statistics.median(xs), 2), "max_ms": round(1e3 * max(xs), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10_000)
    a = ap.parse_args()
    out: dict = {"clients": a.clients, "rounds": a.rounds, "segment": tbl.SEGMENT}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        rows = [row(r, a.clients) for r in range(1, a.rounds + 1)]
        out["old_write_s"] = {"round 10": round(min(old_write(work, rows[:10]) for _ in range(3)), 4),
                              f"round {a.rounds}": round(old_write(work, rows), 3)}
        del rows
        out["old_held_MB"] = {f"round {a.rounds}": round(held_bytes(
            lambda: [row(r, a.clients) for r in range(1, a.rounds + 1)]) / 1e6, 1)}

        early = tbl.RoundsTable.open(work / "early", 0)
        out["new_append"] = {"rounds 1-100": summary(appends(early, 1, 100, a.clients))}
        lay_down(work / "late", a.rounds - 100, a.clients)
        t0 = time.perf_counter()
        late = tbl.RoundsTable.open(work / "late", a.rounds - 100)
        out["resume_open_s"] = round(time.perf_counter() - t0, 2)
        last = f"rounds {a.rounds - 99}-{a.rounds}"
        out["new_append"][last] = summary(appends(late, a.rounds - 99, 100, a.clients))
        out["new_held_MB"] = {"round 100": round(early.tail.nbytes / 1e6, 2),
                              f"round {a.rounds}": round(late.tail.nbytes / 1e6, 2)}
        n = len(tbl.read_rows(work / "late"))
        assert n == a.rounds, n
    save_result("table", out)


if __name__ == "__main__":
    main()
