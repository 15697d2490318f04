"""A Flower ClientApp inside fedgrid's adapter (apps/flower): messages and contexts as Flower's
runtime builds them, replies turned into updates, Context.state as client state, and the apps
`fedgrid check` refuses, each in one line with exit 2."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: E402

from fedgrid.apps.client import Context, Work  # noqa: E402
from fedgrid.apps.flower import records  # noqa: E402
from fedgrid.apps.flower.client import FlowerClient  # noqa: E402


def _client(app: str, client: int = 1, initial: str | None = None, **run_config) -> FlowerClient:
    opts = {"app": app, "initial": initial, "run_config": run_config, "run_id": 11}
    return FlowerClient(Context(client=client, clients=4, site="a", seed=0, data={}, options=opts))


def _work(rnd: int = 2, **settings) -> Work:
    return Work(round=rnd, seed=0, settings={"lr": 0.1, **settings}, global_params=OrderedDict())


def test_the_round_config_holds_what_flowers_strategies_send_and_the_train_settings():
    cfg = records.config({"lr": 0.1, "epochs": 2, "steps": None, "secagg": {"k": 1}, "grid": [1, 2],
                          "mixed": [1, "a"], "tag": "x"}, 7)
    assert cfg == {"lr": 0.1, "epochs": 2, "grid": [1, 2], "tag": "x", "server-round": 7}
    ConfigRecord(cfg)  # Flower takes every value


def test_reply_metrics_get_fedgrids_names_and_the_weight_must_be_a_count():
    got = records.metrics({"num-examples": 9, "train_loss": 1.5, "train-acc": 0.5, "x": [1.0], "t": "s",
                           "ok": True, "train_": 2.0}, "train_")
    assert got == {"loss": 1.5, "acc": 0.5, "train_": 2.0}
    assert records.examples({"num-examples": 9.0}, "train") == 9
    assert records.steps({"num-steps": 12}) == 12 and records.steps({}) is None
    with pytest.raises(ValueError, match="num-steps"):
        records.steps({"num-steps": -1})
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="num-examples"):
            records.examples({"num-examples": bad}, "train")


def test_initial_arrays_from_every_form_flower_code_holds_them_in():
    torch = pytest.importorskip("torch")
    a = np.arange(3, dtype=np.float32)
    assert list(records.initial_arrays(ArrayRecord({"w": Array(a)}))) == ["w"]
    assert list(records.initial_arrays([a, a])) == ["0", "1"]
    sd = records.initial_arrays(torch.nn.Linear(2, 1).state_dict())
    assert list(sd) == ["weight", "bias"] and sd["weight"].dtype == np.float32
    assert list(records.initial_arrays(OrderedDict(w=a))) == ["w"]
    with pytest.raises(TypeError, match="expected an ArrayRecord"):
        records.initial_arrays(a)


def test_context_state_round_trips_exactly_through_its_bytes():
    state = RecordDict({"m": MetricRecord({"n": 3, "f": 0.1}), "c": ConfigRecord({"s": "x", "b": b"\x00\xff"}),
                        "a": ArrayRecord({"v": Array(np.array([1.5, -2.0], np.float64))})})
    back = records.state_from(records.state_bytes(state))
    assert back["m"]["n"] == 3 and back["m"]["f"] == 0.1 and back["c"]["b"] == b"\x00\xff"
    np.testing.assert_array_equal(back["a"]["v"].numpy(), [1.5, -2.0])


def test_a_message_api_app_runs_with_its_mods_and_lifespan_and_sees_the_simulations_context():
    from flower_odd_apps import EVENTS

    c = _client("flower_odd_apps:full", client=3, initial="flower_odd_apps:initial")
    assert c.context.node_config == {"partition-id": 3, "num-partitions": 4}
    params = c.init_params()
    assert list(params) == ["0"]
    EVENTS.clear()
    fit = c.train(params, _work(5))
    assert EVENTS == ["enter", "mod train group 5", "exit"]
    assert fit.num_examples == 3
    assert fit.metrics == {"acc": 0.5, "lr_seen": 0.1, "round_seen": 5.0, "stamped": 1.0}
    c.evaluation_round = 6
    ev = c.evaluate(params)
    assert ev.num_examples == 2 and ev.metrics == {"acc": 0.25, "rnd": 6.0, "stamped": 1.0}


@pytest.mark.parametrize("mode, match", [("two-arrays", "holds 2 ArrayRecords"), ("no-examples", "num-examples")])
def test_replies_flowers_strategies_would_reject_are_the_clients_error(mode, match):
    c = _client("flower_odd_apps:full", initial="flower_odd_apps:initial", mode=mode)
    with pytest.raises(ValueError, match=match):
        c.train(c.init_params(), _work())


def test_a_legacy_numpy_client_trains_and_evaluates_in_flowers_legacy_messages():
    c = _client("flower_legacy_app:app")
    params = c.init_params()
    assert list(params) == ["0", "1"]
    fit = c.train(params, _work(lr=0.05))
    assert fit.num_examples == 27 and set(fit.metrics) == {"loss"} and list(fit.params) == ["0", "1"]
    ev = c.evaluate(fit.params)
    assert ev.num_examples == 27 and set(ev.metrics) == {"loss", "mse"}


def test_state_moves_between_objects_like_a_worker_change():
    a = _client("flower_numpy_app:app", initial="flower_numpy_app:initial")
    p = a.init_params()
    a.train(p, _work(1, lr=0.05))
    b = _client("flower_numpy_app:app", initial="flower_numpy_app:initial")
    b.set_state(a.get_state())
    fa, fb = a.train(p, _work(2, lr=0.05)), b.train(p, _work(2, lr=0.05))
    assert fa.metrics["seen"] == fb.metrics["seen"] == 1.0
    for k in fa.params:
        np.testing.assert_array_equal(fa.params[k], fb.params[k])


def _flower_job(write_job, **client) -> object:
    return write_job(client={"flower": "flower_numpy_app:app", "initial": "flower_numpy_app:initial", **client},
                     data={"dataset": "custom", "clients": 6})


@pytest.mark.parametrize("client, over, key, says", [
    ({"flower": "flower_odd_apps:server"}, {}, "client.flower", "is a ServerApp"),
    ({"flower": "flower_odd_apps:custom"}, {}, "client.flower", "registers 'train.finetune'"),
    ({"initial": None}, {}, "client.initial", "a Message API app gets its first model from the ServerApp"),
    ({"flower": "flower_odd_apps:train_only"}, {"round": {"min_clients": 4, "federated_every": 1}},
     "round.federated_every", "no @app.evaluate() handler"),
    ({}, {"strategy": "fedprox"}, "client.flower", "strategy fedprox needs 'prox'"),
    ({"path": "numpy_client:NumpyLogReg"}, {}, "client", "not both"),
    ({"options": {"a": 1}}, {}, "client", "reads client.run_config"),
    ({"flower": "flower_odd_apps:nothing"}, {}, "client.flower", "has no app 'nothing'"),
])
def test_what_fedgrid_cannot_offer_a_flower_app_is_refused_at_check_in_one_line(write_job, cli, client, over, key,
                                                                                  says):
    import yaml

    path = _flower_job(write_job)
    job = yaml.safe_load(path.read_text())
    job["client"].update(client)
    job["client"] = {k: v for k, v in job["client"].items() if v is not None}
    job.pop("model")
    job.update(over)
    path.write_text(yaml.safe_dump(job))
    rc, out, err = cli("check", path)
    assert rc == 2, (out, err)
    line = err.strip()
    assert "\n" not in line and key in line and says in line, line


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower"


def test_the_flower_example_passes_check(cli):
    rc, out, err = cli("check", EXAMPLE / "job.yaml")
    assert rc == 0, err
    assert "client fmnist_app.client_app:app: 105,866 params in 8 tensors" in out and "from its client.initial" in out


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="the Flower example reads Fashion-MNIST (apt-get install dataset-fashion-mnist)")
def test_the_flower_examples_torch_app_trains_and_evaluates_through_the_adapter(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    opts = {"app": "fmnist_app.client_app:app", "initial": "fmnist_app.task:initial_arrays",
            "run_config": {"max-rows": 64}, "run_id": 1}
    c = FlowerClient(Context(client=2, clients=10, site="a", seed=0, data={}, options=opts))
    params = c.init_params()
    assert list(params)[:2] == ["conv1.weight", "conv1.bias"]
    fit = c.train(params, _work(1, lr=0.05))
    assert fit.num_examples == 64 and fit.metrics["loss"] > 0
    assert any(not np.array_equal(fit.params[k], params[k]) for k in params)
    ev = c.evaluate(fit.params)
    assert ev.num_examples == 1000 and 0.0 <= ev.metrics["acc"] <= 1.0


def test_a_flower_job_needs_only_its_client_count_for_data():
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.config.schema import FLOWER_CLIENT

    job = parse_job({"client": {"flower": "flower_numpy_app:app", "initial": "flower_numpy_app:initial"},
                     "data": {"clients": 4}, "sites": [{"name": "a", "executor": {"kind": "local"}}]})
    assert job.data.dataset == "custom" and job.client.path == FLOWER_CLIENT and job.client.key == "client.flower"
    assert job.client.stateful and job.client_state() == ["client.flower flower_numpy_app:app keeps each client's "
                                                          "Context.state"]
    assert job.client.site_options(job.name)["run_id"] == job.client.site_options(job.name)["run_id"] > 0
