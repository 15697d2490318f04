"""Records cross Parsl's serializer as C-pickled bytes (apps/wire.py): the other side gets the
record itself, equal field for field, and what the C pickler cannot carry still goes (by dill)."""

import numpy as np
from parsl.serialize import deserialize, pack_apply_message, serialize, unpack_apply_message

from fedgrid.apps.store import Ref
from fedgrid.apps.task import TrainTask
from fedgrid.apps.update import ClientEvaluation, ClientUpdate
from fedgrid.apps.wire import Packed


def _params():
    return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, dtype=np.int64)}


def _task(**kw):
    return TrainTask(client=3, site="s", round=2, clients=10, seed=1, data={"dataset": "synthetic"},
                     code={"path": "m:C", "options": {"a": [1, 2]}}, train={"epochs": 1}, params=_params(), **kw)


def _same_params(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        assert b[k].flags.writeable  # a strategy or a client may update them in place


def test_a_packed_task_arrives_as_the_task_itself():
    task = _task(store="/tmp/x", update_key="round-000002/client-00003-a1")
    func, args, kwargs = unpack_apply_message(pack_apply_message(len, (Packed(task),), {}))
    got = args[0]
    assert type(got) is TrainTask and kwargs == {}
    _same_params(task.params, got.params)
    assert {k: v for k, v in vars(got).items() if k != "params"} == \
        {k: v for k, v in vars(task).items() if k != "params"}


def test_a_packed_task_with_a_ref_for_params():
    task = _task()
    task.params = Ref(uri="/tmp/store/round-000002/global", sha256="a" * 64, nbytes=10)
    assert deserialize(serialize((Packed(task),)))[0].params == task.params


def test_what_only_dill_can_carry_still_goes():
    task = _task()
    task.code["options"]["hook"] = lambda x: x + 1  # not picklable by the C pickler
    got = deserialize(serialize((Packed(task),)))[0]
    assert type(got) is TrainTask and got.code["options"]["hook"](1) == 2
    u = ClientUpdate(client=1, site="s", round=1, num_examples=4, params=_params(), extras={"f": lambda: 7})
    back = deserialize(serialize(u))
    assert type(back) is ClientUpdate and back.extras["f"]() == 7


def test_an_update_comes_back_as_an_update_field_for_field():
    u = ClientUpdate(client=1, site="s", round=2, num_examples=4, params=_params(), metrics={"loss": 0.5},
                     timings={"train": 1.0}, extras={"steps": 3, "worker": "h:1"}, codec="none", wire_nbytes=0,
                     ref=Ref(uri="/tmp/store/x", sha256="b" * 64, nbytes=24))
    back = deserialize(serialize(u))
    assert type(back) is ClientUpdate
    _same_params(u.params, back.params)
    assert {k: v for k, v in vars(back).items() if k != "params"} == \
        {k: v for k, v in vars(u).items() if k != "params"}
    assert back.nbytes() == u.nbytes() and back.resolve() is back


def test_an_evaluation_comes_back_as_an_evaluation():
    e = ClientEvaluation(client=2, site="s", round=3, num_examples=9, metrics={"accuracy": 0.25}, seconds=0.5)
    assert deserialize(serialize(e)) == e
