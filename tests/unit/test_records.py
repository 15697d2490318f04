"""The records that cross between driver and site (apps/records.py): they go over the wire as C
pickles unchanged, say every key the code writes, and the round row names every column of the
rounds table."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from dataclasses import FrozenInstanceError

import numpy as np
import pyarrow as pa
import pytest
from parsl.serialize import deserialize, serialize

from fedgrid.apps import records
from fedgrid.apps.records import RoundRow
from fedgrid.apps.task import TrainTask
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.apps.wire import Packed
from fedgrid.flow.persist.table import ROWS_SCHEMA
from fedgrid.flow.rounds.gather import Gathered
from fedgrid.flow.rounds.rows import RoundInfo, round_row


def _keys(td: type) -> set[str]:
    return set(td.__required_keys__) | set(td.__optional_keys__)  # type: ignore[attr-defined]


def _struct_fields(column: str) -> set[str]:
    t = ROWS_SCHEMA.field(column).type
    return {f.name for f in t.value_type}


def test_a_task_with_its_records_goes_through_the_c_pickler_as_it_is():
    """Every record a task carries is plain data: the C pickler takes it (no fallback to dill)."""
    task = TrainTask(client=1, site="s", round=2, clients=4, seed=0, data={"dataset": "synthetic"},
                     code=records.ClientCode(path="m:C", options={}),
                     train={"epochs": 1, "lr": 0.1, "scaffold": {"c": {"w": np.zeros(3, np.float32)}}, "steps": 3},
                     params={"w": np.ones(3, np.float32)}, dp=records.LocalDp(clip=1.0, std=0.5),
                     compress={"codec": "topk", "topk_fraction": 0.1, "dense_below": 0, "feedback": False,
                               "exact": None})
    back = pickle.loads(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
    assert back.dp == task.dp and back.compress == task.compress and back.train["steps"] == 3
    np.testing.assert_array_equal(back.train["scaffold"]["c"]["w"], np.zeros(3))
    got = deserialize(serialize((Packed(task),)))[0]
    assert type(got) is TrainTask and got.dp == records.LocalDp(1.0, 0.5)


def test_local_dp_is_frozen_and_compact():
    dp = records.LocalDp(clip=1.0, std=2.0)
    with pytest.raises(FrozenInstanceError):
        dp.clip = 3.0  # type: ignore[misc]
    assert not hasattr(dp, "__dict__")  # slots: nothing else rides with it


def test_extras_stay_a_dict_on_the_wire():
    """What a site sends beside its params is untrusted: a dict the driver checks key by key."""
    extras: records.Extras = {"steps": 3, "worker": "h:1", "cold": False, "batch_job": None,
                              "state": {"sha256": "a" * 64, "nbytes": 10},
                              "scaffold_delta_c": {"w": np.ones(2, np.float32)}}
    u = ClientUpdate(client=1, site="s", round=1, num_examples=4, params={}, extras=extras)
    back = deserialize(serialize(u))
    assert type(back.extras) is dict and back.extras["state"] == extras["state"] and back.extras["steps"] == 3
    assert set(extras) <= _keys(records.Extras)
    assert ClientUpdate(client=1, site="s", round=1, num_examples=4, params={}).extras == {}


def test_the_secagg_step_and_its_replies_are_the_records():
    """A request names one step's keys; the replies are the shapes the driver checks."""
    assert _keys(records.SecaggStep) == {"client", "round", "secagg", "site"}
    assert {"run_id", "step", "pks", "t", "names", "inbox", "survivors", "dropped", "nonce", "key_dir",
            "frac_bits"} == _keys(records.SecaggOptions)
    assert _keys(records.UnmaskReply) == {"b", "sk", "unreadable"}


def test_the_round_row_names_every_column_of_the_rounds_table_and_every_key_the_round_writes():
    columns = set(ROWS_SCHEMA.names)
    assert columns <= _keys(RoundRow), sorted(columns - _keys(RoundRow))
    # nested rows: the table's structs
    assert _keys(records.UpdateRow) == _struct_fields("updates")
    assert _keys(records.SiteRow) == _struct_fields("site_partials")
    assert _keys(records.FailureRow) == _struct_fields("failures") == _struct_fields("fed_failures")
    assert _keys(records.StaleRow) == _struct_fields("carried") == _struct_fields("reused")
    assert _keys(records.FedClientRow) == _struct_fields("fed_clients")
    assert pa.types.is_list(ROWS_SCHEMA.field("participants").type)
    g = OrderedDict(w=np.zeros(2, np.float32))
    u = ClientUpdate(client=0, site="a", round=1, num_examples=5, params=g, metrics={"loss": 0.5, "f1": 0.7},
                     timings={"train": 1.0, "queue": 0.1}, extras={"steps": 2, "worker": "h:1", "cold": False})
    info = RoundInfo(selected=[0, 1], skipped=[Failure.of(1, "a", "slow")])
    row = round_row(1, info, Gathered(updates=[u], failures=[Failure.of(2, "a", "x")], seconds=0.5), 8, 0.0, 0.01)
    metric_columns = {"train_f1"}  # named by the client at run time (records.set_columns)
    assert set(row) - metric_columns <= _keys(RoundRow)
    assert set(row["updates"][0]) == _keys(records.UpdateRow)
    # the columns keep the order rows have always had: the clients' metrics after the test columns
    assert list(row)[:9] == ["round", "attempt", "started_at", "seconds", "test_accuracy", "test_loss", "train_loss",
                             "train_accuracy", "train_f1"]
    assert list(row)[9:12] == ["clients_selected", "clients_ok", "clients_failed"]


def test_set_columns_adds_columns_named_at_run_time():
    row: RoundRow = {"round": 1}
    assert records.set_columns(row, {"fed_f1": 0.5, "train_f1": None}) is row
    assert row == {"round": 1, "fed_f1": 0.5, "train_f1": None}


def test_a_failure_row_is_the_record():
    f = Failure.of(3, "a", ValueError("bad"))
    assert f.row() == {"client": 3, "site": "a", "reason": "ValueError: bad"}
    assert set(f.row()) == _keys(records.FailureRow)


def test_the_site_step_reply_of_keys_is_a_public_key(tmp_path):
    from fedgrid.apps import secagg as sa

    step: records.SecaggStep = {"client": 0, "round": 1, "secagg": {"run_id": "t", "key_dir": str(tmp_path),
                                                                      "step": "keys"}}
    pk = sa.step(step)
    assert isinstance(pk, bytes) and len(pk) == 32
    with pytest.raises(KeyError):
        sa.step({"client": 0, "round": 1, "secagg": {"run_id": "t", "key_dir": str(tmp_path),
                                                      "step": "nope"}})  # type: ignore[typeddict-item]
