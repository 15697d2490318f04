"""The data plane: objects round-trip bit-exact, and every way a read can go wrong is caught."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps.store import Ref, Store, StoreError, fetch


def _params() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return OrderedDict([("w", rng.standard_normal((33, 7)).astype(np.float32)),
                        ("b", np.arange(5, dtype=np.int64)), ("scalar", np.array(3.5)),
                        ("empty", np.zeros((0, 4), dtype=np.float16))])


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])


def test_local_round_trip_is_exact(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    ref = store.put(_params(), "round-000001/global")
    assert ref.nbytes == (tmp_path / "s/round-000001/global").stat().st_size
    assert len(ref.sha256) == 64
    got = fetch(ref)
    _same(_params(), got)
    assert got["w"].flags.writeable  # sites load these straight into torch


def test_file_url_and_fsspec_memory_url(tmp_path: Path) -> None:
    ref = Store(f"file://{tmp_path}/s").put(_params(), "k")
    _same(_params(), fetch(ref))
    mem = Store("memory://fedgrid-test/run")
    ref = mem.put(_params(), "round-000002/client-00001")
    assert ref.uri == "memory://fedgrid-test/run/round-000002/client-00001"
    _same(_params(), fetch(ref))
    mem.delete("round-000002")
    with pytest.raises(StoreError, match="not found"):
        fetch(ref)


def test_truncated_corrupted_and_missing_objects_are_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    ref = store.put(_params(), "obj")
    path = Path(ref.uri)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(StoreError, match="truncated"):
        fetch(ref)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(StoreError, match="sha256"):
        fetch(ref)
    with pytest.raises(StoreError, match="not found"):
        fetch(Ref(str(tmp_path / "nope"), ref.sha256, ref.nbytes))


def test_delete_and_probe(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    store.put(_params(), "round-000001/global")
    store.delete("round-000001")
    assert not (tmp_path / "s/round-000001").exists()
    store.probe()
    assert list((tmp_path / "s").iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_missing_fsspec_backend_names_the_extra() -> None:
    with pytest.raises(StoreError, match=r"fedgrid\[s3\]"):
        Store("s3://bucket/fedgrid")


def test_sweep_removes_finished_rounds_and_late_writes(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    for key in ("round-000001/global", "round-000002/client-00003-a1", "round-000003/global"):
        store.put(_params(), key)
    store.sweep(2)  # round 2 finished; a late client of round 1 had written after its cleanup
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-000003"]
    mem = Store("memory://fedgrid-sweep")
    mem.put(_params(), "round-000001/global")
    mem.put(_params(), "round-000004/global")
    mem.sweep(3)
    assert [p.rsplit("/", 1)[-1] for p in mem._fs.ls("memory://fedgrid-sweep", detail=False)] == ["round-000004"]
