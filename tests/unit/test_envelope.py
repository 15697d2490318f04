"""What a site says about its answer is checked against what the driver sent, before anything is
fetched or aggregated: each field that crosses from a site, every bad value a recorded rejection,
and what passes always writes into the round file and the rounds table."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

from fedgrid.apps.store import Ref
from fedgrid.apps.update import ClientEvaluation, ClientUpdate
from fedgrid.flow.persist.table import RoundsTable, read_rows
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.rounds.rows import RoundInfo, round_row
from fedgrid.flow.rounds.validate import InvalidUpdate, envelope


def _u(**over) -> ClientUpdate:
    base = dict(client=3, site="a", round=7, num_examples=100, params=OrderedDict(w=np.zeros(2, np.float32)),
                metrics={"loss": 0.5}, timings={"train": 1.0}, extras={"steps": 4, "worker": "h:1", "cold": False})
    return ClientUpdate(**{**base, **over})


@pytest.mark.parametrize("over", [
    {"client": 4}, {"client": True}, {"client": 3.0}, {"site": "b"}, {"site": 7}, {"round": 8}, {"round": 9},
    {"num_examples": 10**15}, {"num_examples": float("nan")}, {"num_examples": float("inf")},
    {"num_examples": True}, {"num_examples": 2**63}, {"num_examples": 0}, {"num_examples": -5},
    {"num_examples": 100.0}, {"wire_nbytes": -1}, {"wire_nbytes": 2**63}, {"wire_nbytes": 1.5},
    {"ref": Ref(uri="file:///x", sha256="0" * 64, nbytes=2**62)}, {"ref": Ref(uri="file:///x", sha256="0", nbytes=-3)},
    {"metrics": {"loss": "0.5"}}, {"metrics": {"loss": float("inf")}}, {"metrics": None},
    {"timings": {"train": float("nan")}}, {"timings": {"train": -1.0}}, {"timings": {"train": "fast"}},
    {"timings": None}, {"extras": {"steps": 1.5}}, {"extras": {"steps": -1}}, {"extras": {"steps": "4"}},
    {"extras": {"worker": 5}}, {"extras": {"cold": "no"}}, {"extras": None},
])
def test_a_bad_field_from_a_site_is_a_rejection(over):
    with pytest.raises(InvalidUpdate, match="rejected"):
        envelope(_u(**over), 3, "a", 7)


def test_an_answer_that_is_not_an_update_is_a_rejection():
    for bad in (None, 3, {"client": 3}, "update"):
        with pytest.raises(InvalidUpdate, match="expected a ClientUpdate"):
            envelope(bad, 3, "a", 7)


def test_what_passes_is_plain_python_and_the_round_file_and_table_can_hold_it(tmp_path):
    u = envelope(_u(client=np.int64(3), round=np.int64(7), num_examples=np.int32(100), wire_nbytes=np.int64(8),
                    extras={"steps": np.int64(4), "worker": "h:1"}, timings={"train": np.float32(1.5)},
                    metrics={"mae": np.float64(0.25)}), 3, "a", 7)
    assert (type(u.client), type(u.round), type(u.num_examples), type(u.extras["steps"])) == (int, int, int, int)
    assert type(u.timings["train"]) is float and type(u.metrics["mae"]) is float
    row = round_row(7, RoundInfo(selected=[3]), Gathered(updates=[u]), 10, 0.0, 0.1)
    json.dumps(row)  # the round file's metadata is JSON
    RoundsTable.open(tmp_path, 0).append(row)
    assert read_rows(tmp_path)[0]["train_mae"] == 0.25


def test_an_evaluation_is_checked_the_same_way():
    e = ClientEvaluation(client=3, site="a", round=7, num_examples=np.int64(50), metrics={"rmse": 1})
    assert envelope(e, 3, "a", 7).num_examples == 50
    for bad in ({"client": 2}, {"num_examples": 10**12}, {"metrics": {"rmse": float("nan")}}):
        with pytest.raises(InvalidUpdate, match="rejected"):
            envelope(ClientEvaluation(**{**vars(e), **bad}), 3, "a", 7)


def test_a_reference_must_point_into_this_runs_area_of_the_store(tmp_path):
    area = tmp_path / "store" / "job-1234"
    (area / "round-000007").mkdir(parents=True)
    ok = Ref(uri=str(area / "round-000007" / "client-00003-a1"), sha256="0" * 64, nbytes=10)
    assert envelope(_u(params={}, ref=ok), 3, "a", 7, str(area)).ref is ok
    (tmp_path / "outside").mkdir()
    (area / "link").symlink_to(tmp_path / "outside")
    for uri in ("/etc/passwd", str(area) + "-other/x", str(area / ".." / "job-9999" / "x"), str(area / "link" / "x"),
                "s3://bucket/x", "http://127.0.0.1:1/x"):
        with pytest.raises(InvalidUpdate, match="outside this run's area"):
            envelope(_u(params={}, ref=Ref(uri=uri, sha256="0" * 64, nbytes=10)), 3, "a", 7, str(area))
    with pytest.raises(InvalidUpdate, match="outside this run's area"):  # a run without a store takes none
        envelope(_u(params={}, ref=ok), 3, "a", 7, None)
    remote = "s3://bucket/fedgrid/job-1234"
    assert envelope(_u(params={}, ref=Ref(uri=remote + "/round-000007/c", sha256="0", nbytes=1)), 3, "a", 7, remote)
    with pytest.raises(InvalidUpdate, match="outside"):
        envelope(_u(params={}, ref=Ref(uri=remote + "/../other/c", sha256="0", nbytes=1)), 3, "a", 7, remote)


def test_a_reference_to_something_that_is_not_a_regular_file_of_its_size_is_never_read(tmp_path):
    import os

    from fedgrid.apps.store import StoreError, fetch

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading in the ordinary way would wait for a writer forever
    with pytest.raises(StoreError, match="not a regular file"):
        fetch(Ref(uri=str(fifo), sha256="0" * 64, nbytes=10))
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100)
    with pytest.raises(StoreError, match="100 bytes, expected 10"):
        fetch(Ref(uri=str(big), sha256="0" * 64, nbytes=10))


def test_an_example_count_beyond_what_the_client_is_known_to_hold_is_refused():
    from fedgrid.flow.rounds.validate import MAX_EXAMPLES, examples_limit

    assert examples_limit(0.0, None, 2.0) == MAX_EXAMPLES  # never answered: only the job's cap holds
    assert examples_limit(float("nan"), 500, 2.0) == 500
    assert examples_limit(100.0, None, 2.0) == 200 and examples_limit(100.0, 150, 2.0) == 150
    assert envelope(_u(num_examples=200), 3, "a", 7, max_examples=200).num_examples == 200
    with pytest.raises(InvalidUpdate, match=r"num_examples is '201', expected a whole number in \[1, 200\]"):
        envelope(_u(num_examples=201), 3, "a", 7, max_examples=200)
