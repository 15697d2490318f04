"""round.absent: reuse (MIFA): an absent client's last delta stands in, and its memory survives a
save and load (in a real run: tests/integration/test_memory_run.py)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.clients.memory import UpdateMemory
from fedgrid.flow.config import parse_job


def test_stand_in_is_the_last_delta_on_the_current_model_weighted_by_staleness(make_job) -> None:
    job = parse_job(make_job(Path("/tmp/r"), round={"absent": "reuse", "max_staleness": 2, "staleness_exponent": 1}))
    mem = UpdateMemory(job)
    g1 = OrderedDict(w=np.array([1.0, 1.0], np.float32), n=np.array(3, np.int64))
    u = ClientUpdate(client=4, site="b", round=1, num_examples=7, extras={"steps": 5},
                     params=OrderedDict(w=np.array([1.5, 0.0], np.float32), n=np.array(9, np.int64)))
    mem.remember(1, g1, [u])
    g3 = OrderedDict(w=np.array([2.0, 2.0], np.float32), n=np.array(3, np.int64))
    (s,) = mem.stand_ins(3, g3, [4, 5], ["a"] * 3 + ["b"] * 3)  # client 5 never answered: nothing to reuse
    np.testing.assert_allclose(s.params["w"], [2.5, 1.0])  # g3 + (x - g1)
    assert int(s.params["n"]) == 3  # integer buffers follow the current model
    assert (s.client, s.site, s.num_examples, s.extras["steps"], s.staleness) == (4, "b", 7, 5, 2)
    assert s.scale == pytest.approx(1 / 3)
    assert mem.stand_ins(4, g3, [4], ["a"] * 6) == []  # staler than max_staleness: dropped
    back = UpdateMemory(job)
    back.load(mem.state())
    assert back.last.keys() == {4} and back.last[4][:3] == (1, 7, 5)
    np.testing.assert_array_equal(back.last[4][3]["w"], [0.5, -1.0])
