"""Feature skew (`data.skew`): a site's override turns its clients' rows exactly as documented, and
a job without one reads the very same arrays as before the option existed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from fedgrid.apps import datasets
from fedgrid.apps.datasets import Arrays, apply_skew, client_arrays
from fedgrid.flow.config import parse_job
from fedgrid.flow.config.schema import DataSpec, PartitionSpec

# client c's one image is [[4c, 4c+1], [4c+2, 4c+3]]: small enough to turn by hand
TINY = {c: np.arange(4 * c, 4 * c + 4, dtype=np.float32).reshape(1, 1, 2, 2) for c in range(2)}


def _tiny_job(tmp_path: Path, skew: dict) -> object:
    """Two clients on two sites, one per-client parquet file each; site b has the skew."""
    for c, x in TINY.items():
        table = pa.table({"pixels": pa.array([x.ravel().tolist()], pa.list_(pa.float32())), "label": [c]})
        pq.write_table(table, tmp_path / f"c{c}.parquet")
    raw = {
        "name": "skew", "rounds": 1, "model": "logreg",
        "data": {"dataset": "parquet", "path": str(tmp_path / "c{client}.parquet"), "clients": 2,
                 "partition": {"kind": "none"}, "shape": [1, 2, 2], "num_classes": 2, "features": ["pixels"]},
        "sites": [{"name": "a", "executor": {"kind": "local"}, "clients": 1},
                  {"name": "b", "executor": {"kind": "local"}, "clients": 1, "data": {"skew": skew}}],
        "checkpoint": {"dir": str(tmp_path / "run")},
    }
    return parse_job(raw, tmp_path / "job.yaml")


def test_site_override_turns_that_sites_rows_exactly(tmp_path):
    job = _tiny_job(tmp_path, {"rotate": 90, "scale": 2.0, "shift": 0.5})
    assert job.client_sites() == ["a", "b"]
    a = client_arrays(job.site_data("a").model_dump(), 0, 2, job.seed)
    b = client_arrays(job.site_data("b").model_dump(), 1, 2, job.seed)
    # site a has no override: its client's row as written
    np.testing.assert_array_equal(a.x, TINY[0])
    # [[4, 5], [6, 7]] a quarter turn counter-clockwise is [[5, 7], [4, 6]]; x 2 + 0.5
    np.testing.assert_array_equal(b.x, np.array([[[[10.5, 14.5], [8.5, 12.5]]]], np.float32))
    assert b.x.dtype == np.float32 and b.y.tolist() == [1]


@pytest.mark.parametrize(("rotate", "want"), [
    (0, [[0, 1], [2, 3]]), (90, [[1, 3], [0, 2]]), (180, [[3, 2], [1, 0]]), (270, [[2, 0], [3, 1]]),
    (-90, [[2, 0], [3, 1]]), (360, [[0, 1], [2, 3]]),
])
def test_rotation_by_hand(rotate, want):
    arr = Arrays(TINY[0], np.array([0]), 2)
    out = apply_skew(arr, {"rotate": rotate, "scale": 1.0, "shift": 0.0, "noise": 0.0}, 0, 0)
    np.testing.assert_array_equal(out.x[0, 0], np.array(want, np.float32))


def test_order_is_rotate_scale_shift():
    arr = Arrays(TINY[0], np.array([0]), 2)
    out = apply_skew(arr, {"rotate": 180, "scale": 0.5, "shift": -1.0}, 0, 0)
    # [[3, 2], [1, 0]] x 0.5 - 1: the shift comes after the scale
    np.testing.assert_array_equal(out.x[0, 0], np.array([[0.5, 0.0], [-0.5, -1.0]], np.float32))
    np.testing.assert_array_equal(arr.x, TINY[0])  # the input (maybe a cached pool) is untouched


def test_noise_is_seeded_per_client_and_has_its_std():
    x = np.zeros((200, 1, 8, 8), np.float32)
    arr = Arrays(x, np.zeros(200, np.int64), 2)
    skew = {"noise": 0.1}
    one, again = apply_skew(arr, skew, 0, 3), apply_skew(arr, skew, 0, 3)
    np.testing.assert_array_equal(one.x, again.x)  # every worker, every resume: the same rows
    assert not np.array_equal(one.x, apply_skew(arr, skew, 0, 4).x)  # another client, other noise
    assert not np.array_equal(one.x, apply_skew(arr, skew, 1, 3).x)  # another job seed, other noise
    assert one.x.dtype == np.float32
    assert abs(float(one.x.std()) - 0.1) < 0.005 and abs(float(one.x.mean())) < 0.005
    assert not x.any()


@pytest.mark.parametrize("skew", [None, {}, {"rotate": 0, "scale": 1.0, "shift": 0.0, "noise": 0.0}])
def test_no_skew_is_bit_identical(skew):
    data = DataSpec(dataset="digits", clients=5, partition=PartitionSpec(kind="dirichlet")).model_dump()
    assert data["skew"] is None
    plain = {k: v for k, v in data.items() if k != "skew"}  # a data block from before the option
    for c in range(5):
        before = client_arrays(plain, c, 5, 0)
        after = client_arrays({**data, "skew": skew}, c, 5, 0)
        assert after.x.dtype == before.x.dtype and after.x.shape == before.x.shape
        assert after.x.tobytes() == before.x.tobytes() and after.y.tobytes() == before.y.tobytes()


def test_skewed_digits_keep_their_split_and_labels():
    data = DataSpec(dataset="digits", clients=4).model_dump()
    skewed = {**data, "skew": {"rotate": 90, "scale": 1.5, "shift": 0.25, "noise": 0.0}}
    for c in range(4):
        plain, turned = client_arrays(data, c, 4, 0), client_arrays(skewed, c, 4, 0)
        np.testing.assert_array_equal(turned.y, plain.y)
        want = np.rot90(plain.x, 1, axes=(-2, -1)) * np.float32(1.5) + np.float32(0.25)
        np.testing.assert_array_equal(turned.x, want)


def test_central_test_set_is_never_skewed():
    data = DataSpec(dataset="digits").model_dump()
    skewed = {**data, "skew": {"rotate": 180, "scale": 0.5, "shift": 0.5, "noise": 0.1}}
    plain, other = datasets.load_test(data, 0), datasets.load_test(skewed, 0)
    assert plain is not None and other is not None
    assert other.x.tobytes() == plain.x.tobytes()


def test_builtin_client_holds_out_skewed_rows_too():
    from fedgrid.apps.builtin import BuiltinClient
    from fedgrid.apps.client import Context

    data = DataSpec(dataset="digits", clients=3, holdout=0.25).model_dump()
    skew = {"rotate": 90, "scale": 1.0, "shift": 1.0, "noise": 0.0}
    model = {"name": "logreg", "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {}}

    def parts(d: dict) -> tuple:
        client = BuiltinClient(Context(client=1, clients=3, site="b", seed=0, data=d, options={"model": model}))
        return client.tensors(part="train")[0].numpy(), client.tensors(part="holdout")[0].numpy()

    (train, held), (train_s, held_s) = parts(data), parts({**data, "skew": skew})
    assert len(held) > 0
    np.testing.assert_array_equal(train_s, np.rot90(train, 1, axes=(-2, -1)) + np.float32(1.0))
    np.testing.assert_array_equal(held_s, np.rot90(held, 1, axes=(-2, -1)) + np.float32(1.0))


def test_schema_refuses_bad_skews():
    with pytest.raises(ValidationError, match="multiple of 90"):
        DataSpec(skew={"rotate": 45})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        DataSpec(skew={"noise": -0.1})
    with pytest.raises(ValidationError, match="blur"):
        DataSpec(skew={"blur": 1.0})


def test_rotation_needs_square_images():
    flat = Arrays(np.zeros((3, 16), np.float32), np.zeros(3, np.int64), 2)
    with pytest.raises(ValueError, match="image rows"):
        apply_skew(flat, {"rotate": 90}, 0, 0)
    wide = Arrays(np.zeros((3, 1, 2, 4), np.float32), np.zeros(3, np.int64), 2)
    with pytest.raises(ValueError, match="square"):
        apply_skew(wide, {"rotate": 270}, 0, 0)
    assert apply_skew(wide, {"rotate": 180}, 0, 0).x.shape == (3, 1, 2, 4)  # a half turn keeps H x W
    assert apply_skew(flat, {"scale": 2.0}, 0, 0).x.shape == (3, 16)  # no rotation: any rows


def test_describe_names_the_skew():
    data = DataSpec(dataset="digits", skew={"rotate": 90, "scale": 0.5}).model_dump()
    assert datasets.describe(data) == "digits (iid, skew rotate 90 scale 0.5)"
    assert datasets.describe(DataSpec(dataset="digits").model_dump()) == "digits (iid)"
