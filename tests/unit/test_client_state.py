"""Client state at the site: data-only encoding, which version a task starts from, what a failed or
dropped attempt leaves behind, eviction, personal layers and the schedule over rounds."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedgrid.apps import sitestate
from fedgrid.apps import state as codec
from fedgrid.apps.client import anneal
from fedgrid.apps.store import Store
from fedgrid.flow.clients import profiles as prof


def test_a_torch_optimizer_scheduler_and_rng_round_trip_as_data():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    rng = np.random.default_rng(7)
    rng.random(3)
    tree = {"opt": opt.state_dict(), "sched": sched.state_dict(), "rng": rng.bit_generator.state,
            "n": np.int64(3), "t": (1, "a", None, float("nan"), float("inf")), "w": np.zeros((), np.float32)}
    back = codec.decode(codec.encode(tree))

    opt2 = torch.optim.Adam(model.parameters(), lr=0.1)
    opt2.load_state_dict(back["opt"])  # int keys and tensors come back as torch wants them
    assert set(back["opt"]["state"]) == {0, 1, 2, 3}
    for k, s in opt.state_dict()["state"].items():
        for name, v in s.items():
            assert torch.equal(back["opt"]["state"][k][name], v)
    assert back["sched"] == sched.state_dict()
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = back["rng"]
    assert rng2.random() == rng.random()
    assert back["n"] == 3 and isinstance(back["n"], np.integer)
    assert back["t"][:3] == (1, "a", None) and np.isnan(back["t"][3]) and back["t"][4] == float("inf")
    assert back["w"].shape == () and back["w"].dtype == np.float32


@pytest.mark.parametrize("bad", [object(), {"f": len}, {"b": b"raw"}, {(1, 2): 3}, np.array([object()])])
def test_anything_but_data_is_refused_by_where_it_is(bad):
    with pytest.raises(codec.StateError, match="client state at"):
        codec.encode({"x": bad})


def test_a_state_object_never_runs_code(tmp_path):
    store = Store(str(tmp_path))
    ref = store.put_addressed(codec.encode({"a": np.arange(3), "s": "x"}), "f")
    assert ref.uri.endswith("/f/" + ref.sha256)
    assert "__reduce__" not in (tmp_path / "f" / ref.sha256).read_bytes().decode("latin1")
    with pytest.raises(codec.StateError):
        codec.decode({"__tree__": np.frombuffer(b'{"__fg__": "pickle"}', np.uint8)})


class Counter:
    """A client whose whole state is a counter; it records which of its methods ran."""

    made = 0

    def __init__(self) -> None:
        Counter.made += 1
        self.n = 0

    def get_state(self):
        return {"n": self.n}

    def set_state(self, state) -> None:
        self.n = state["n"]


def _keep(tmp_path, have=None, keep=()):
    return {"store": str(tmp_path), "folder": "state/clients/client-00000", "have": have, "keep": list(keep),
            "personal": [], "ditto": None}


def _call(f, *a):
    return f(*a)


LATER = 1e12  # a task's start far ahead of every file's time: all it does not name is old enough to go


def _train(s, keep, started: float = 0.0):
    """One accepted-or-not attempt: enter, train (n += 1), leave; returns the digest sent back."""
    sitestate.enter(s, keep, Counter, _call)
    s.version = sitestate.DIRTY
    s.client.n += 1
    return sitestate.leave(s, keep, _call, started)


def test_a_task_starts_from_the_version_it_names_whichever_object_runs_it(tmp_path):
    a, b = sitestate.Slot(Counter()), sitestate.Slot(Counter())  # two workers' objects of one client
    v1 = _train(a, _keep(tmp_path))
    v2 = _train(a, _keep(tmp_path, v1, [v1["sha256"]]))
    assert a.client.n == 2
    # worker b never ran the client: it reads version 2 from the store
    v3 = _train(b, _keep(tmp_path, v2, [v2["sha256"], v1["sha256"]]))
    assert b.client.n == 3
    # worker a still holds version 2; the driver accepted version 3 (from b): a reloads it
    made = Counter.made
    sitestate.enter(a, _keep(tmp_path, v3), Counter, _call)
    assert a.client.n == 3 and Counter.made == made  # set_state on the same object, nothing rebuilt


def test_an_attempt_the_driver_did_not_accept_never_becomes_the_state(tmp_path):
    s = sitestate.Slot(Counter())
    v1 = _train(s, _keep(tmp_path))
    dropped = _train(s, _keep(tmp_path, v1, [v1["sha256"]]))  # late or rejected: never recorded
    assert s.client.n == 2 and dropped["sha256"] != v1["sha256"]
    sitestate.enter(s, _keep(tmp_path, v1, [v1["sha256"]]), Counter, _call)  # the retry names v1 again
    assert s.client.n == 1


def test_a_train_that_raised_half_way_is_no_version(tmp_path):
    s = sitestate.Slot(Counter())
    v1 = _train(s, _keep(tmp_path))
    s.version = sitestate.DIRTY  # as train_client marks it before client code runs
    s.client.n = 99  # ... and the code raised after changing its state
    sitestate.enter(s, _keep(tmp_path, v1), Counter, _call)
    assert s.client.n == 1


def test_no_accepted_state_yet_means_a_new_object(tmp_path):
    s = sitestate.Slot(Counter())
    _train(s, _keep(tmp_path))  # its first attempt was dropped
    sitestate.enter(s, _keep(tmp_path), Counter, _call)
    assert s.client.n == 0 and s.version is None


def test_a_version_that_cannot_be_read_fails_the_attempt_never_a_silent_start_over(tmp_path):
    s, other = sitestate.Slot(Counter()), sitestate.Slot(Counter())
    v1 = _train(s, _keep(tmp_path))
    Store(str(tmp_path)).delete("state")  # a store this worker does not see, or one wiped by hand
    with pytest.raises(sitestate.StateUnreadable, match=f"version {v1['sha256'][:12]} cannot be read"):
        sitestate.enter(other, _keep(tmp_path, v1), Counter, _call)


def test_old_versions_are_removed_but_the_ones_the_driver_names(tmp_path):
    s = sitestate.Slot(Counter())
    v = [_train(s, _keep(tmp_path))]
    for _ in range(4):
        keep = [v[-1]["sha256"], v[-2]["sha256"] if len(v) > 1 else ""]
        v.append(_train(s, _keep(tmp_path, v[-1], keep), started=LATER))
    left = Store(str(tmp_path)).keys("state/clients/client-00000")
    assert sorted(left) == sorted({v[-1]["sha256"], v[-2]["sha256"], v[-3]["sha256"]})


def test_an_older_attempt_finishing_late_never_removes_what_a_newer_one_wrote(tmp_path):
    """A task of a site given up as down (or a FedBuff flight past its deadline) may still run
    and finish after the client's next attempt wrote a version the driver has accepted."""
    import time

    old, new = sitestate.Slot(Counter()), sitestate.Slot(Counter())
    v1 = _train(new, _keep(tmp_path))
    old_started = time.time() - 2 * sitestate.PRUNE_MARGIN_S  # submitted long before
    v2 = _train(new, _keep(tmp_path, v1, [v1["sha256"]]))  # the newer attempt, accepted
    _train(old, _keep(tmp_path, v1, [v1["sha256"]]), started=old_started)  # the old one ends now
    assert v2["sha256"] in Store(str(tmp_path)).keys("state/clients/client-00000")


def test_a_worker_keeps_a_bounded_number_of_client_objects():
    sitestate._SLOTS.clear()
    for c in range(10):
        sitestate.slot(("k", c), Counter, bound=4)
    assert sitestate.cached() == 4
    first = sitestate.slot(("k", 9), Counter, bound=4)
    assert sitestate.slot(("k", 9), Counter, bound=4) is first
    sitestate._SLOTS.clear()


def test_the_driver_records_a_version_only_from_an_accepted_update_and_keeps_the_one_before():
    from fedgrid.apps.update import ClientUpdate

    p = prof.empty(3)
    assert prof.state_of(p, 1) == (None, [])
    for sha in ("a" * 64, "b" * 64):
        prof.keep_state(p, ClientUpdate(client=1, site="s", round=1, num_examples=1, params={},
                                        extras={"state": {"sha256": sha, "nbytes": 10}}))
    have, keep = prof.state_of(p, 1)
    assert have == {"sha256": "b" * 64, "nbytes": 10} and keep == ["b" * 64, "a" * 64]
    assert prof.state_of(p, 0) == (None, [])


def test_personal_layers_stay_at_the_site_and_leave_with_the_global_values():
    start = OrderedDict(w=np.zeros(2, np.float32), bn=np.ones(2, np.float32))
    kept = sitestate.Kept()
    assert sitestate.with_personal(start, kept) is start  # first round: the global values
    trained = OrderedDict(w=np.full(2, 3.0, np.float32), bn=np.full(2, 5.0, np.float32))
    out = sitestate.split_personal(trained, start, ["bn"], kept)
    np.testing.assert_array_equal(out["bn"], start["bn"])
    np.testing.assert_array_equal(out["w"], trained["w"])
    np.testing.assert_array_equal(kept.personal["bn"], [5, 5])
    np.testing.assert_array_equal(sitestate.with_personal(start, kept)["bn"], [5, 5])


def test_the_schedule_continues_across_a_raised_target():
    straight = [anneal(r, ((0, 10),), 1.0, 0.0, "cosine") for r in range(1, 11)]
    assert straight[0] == 1.0 and straight[-1] == pytest.approx((1 + np.cos(np.pi * 0.9)) / 2)
    extended = [anneal(r, ((0, 10), (10, 14)), 1.0, 0.0, "cosine") for r in range(1, 15)]
    assert extended[:10] == straight  # the rounds already run are what they were
    assert extended[10] == straight[9]  # the new phase starts where the schedule was
    assert all(a >= b for a, b in zip(extended[10:], extended[11:], strict=False)) and extended[-1] > 0
    assert anneal(5, ((0, 10),), 1.0, 0.5, "linear") == pytest.approx(0.5 + 0.5 * 0.6)
    with pytest.raises(ValueError, match="shape"):
        anneal(1, ((0, 2),), 1, 0, "step")


def test_fedrep_trains_the_head_alone_then_the_body_alone():
    from fedgrid.apps.builtin import rep_sgd
    from fedgrid.apps.client import Work

    def trained(epochs: int) -> dict[str, np.ndarray]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(1)), torch.arange(20) % 2
        settings = {"epochs": epochs, "batch_size": 5, "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0,
                    "head_epochs": 2, "personal_layers": ["2.weight", "2.bias"]}
        before = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
        rep_sgd(Work(round=1, seed=3, settings=settings, global_params={}), model, x, y)
        assert all(p.requires_grad for p in model.parameters())  # the cached model is left trainable
        after = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        return {k: after[k] - before[k] for k in after}

    head_only, both = trained(0), trained(1)
    assert not np.any(head_only["0.weight"]) and np.any(head_only["2.weight"])  # body frozen in the head phase
    assert np.any(both["0.weight"])
    np.testing.assert_array_equal(both["2.weight"], head_only["2.weight"])  # head frozen in the body phase


@pytest.mark.parametrize(("name", "norm"), [
    ("bn1.weight", True), ("layer1.0.bn2.running_var", True), ("encoder.norm.weight", True), ("ln_f.bias", True),
    ("h.0.layernorm.weight", True), ("bn.num_batches_tracked", True), ("normal.weight", False),
    ("bneck.conv.weight", False), ("fc.weight", False)])
def test_fedbn_finds_a_clients_normalization_params_by_name_when_there_is_no_module(name, norm):
    from fedgrid.flow.clients.personal import _hinted

    assert _hinted(name) is norm
