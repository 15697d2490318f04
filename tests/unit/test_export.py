"""`fedgrid export`: every format holds the checkpoint's tensors exactly (0-d ones included), and the
.json beside the file names the client that trained them and every metric of the exported round.

The run directories are written with the driver's own writers (the round checkpoint and the rounds
table), so what export reads is what a run leaves; no executor is started and nothing trains.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedgrid.apps import state as codec
from fedgrid.apps.sitestate import FOLDER
from fedgrid.apps.store import Store
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.commands.export import export_model
from fedgrid.flow.config.schema import Job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.persist import dataplane
from fedgrid.flow.persist.table import RoundsTable


def _params() -> OrderedDict[str, np.ndarray]:
    """A model's state_dict as a checkpoint holds it: 0-d tensors (BatchNorm's int64 counter and a
    float scalar) between ordinary ones, and dtypes a cast would change."""
    rng = np.random.default_rng(0)
    return OrderedDict([
        ("conv.weight", rng.standard_normal((2, 1, 3, 3)).astype(np.float32)),
        ("bn.running_mean", rng.standard_normal(2)),  # float64
        ("bn.num_batches_tracked", np.array(7, dtype=np.int64)),
        ("temperature", np.array(0.125, dtype=np.float32)),
        ("head.weight", rng.standard_normal((3, 4)).astype(np.float16)),
        ("mask", np.array([True, False, True])),
        ("codes", np.arange(5, dtype=np.uint8)),
        ("empty", np.zeros((0, 3), dtype=np.float32)),
    ])


def _job(run_dir: Path, **over: Any) -> dict[str, Any]:
    """The job as a checkpoint records it (the schema's own dump, defaults filled in)."""
    raw = {"name": "exp", "data": {"dataset": "digits", "clients": 2},
           "sites": [{"name": "a", "executor": {"kind": "local", "workers": 1}, "clients": 2}],
           "checkpoint": {"dir": str(run_dir)}, **over}
    return Job.model_validate(raw).model_dump(mode="json")


def _row(rnd: int, **extra: Any) -> dict[str, Any]:
    return {"round": rnd, "attempt": 1, "seconds": 0.5, "test_accuracy": 0.75, "test_loss": 0.6,
            "train_loss": 0.7, "train_accuracy": 0.7, "clients_selected": 2, "clients_ok": 2,
            "clients_failed": 0, "participants": [0, 1], "failures": [], "examples": 20,
            "updates": [{"client": 0, "site": "a", "examples": 10, "metrics": [{"name": "mae", "value": 0.5}]}],
            **extra}


def _run(run_dir: Path, job: dict[str, Any], rows: list[dict[str, Any]],
         params: OrderedDict[str, np.ndarray] | None = None, in_table: bool = True,
         profiles: OrderedDict[str, np.ndarray] | None = None) -> Path:
    """Round 0 and one round file per row, each row appended to the rounds table (unless
    `in_table` is false for the last: a driver killed between the two writes); `profiles` go in
    every round after 0 (round 0 has none, as in a run)."""
    params = _params() if params is None else params
    ckpt.write_round(run_dir, ckpt.RoundState(round=0, params=params, row={"round": 0}, job=job))
    table = RoundsTable.open(run_dir, 0)
    for i, row in enumerate(rows):
        ckpt.write_round(run_dir, ckpt.RoundState(round=row["round"], params=params, row=row, job=job,
                                                  profiles=profiles or OrderedDict()))
        if in_table or i < len(rows) - 1:
            table.append(row)
    return run_dir


def _strict_json(path: Path) -> dict[str, Any]:
    """The file as a strict JSON reader sees it: a bare NaN or Infinity is an error."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{path.name} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _same(got: dict[str, Any], want: OrderedDict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, a in want.items():
        b = np.asarray(got[name])
        assert (b.dtype, b.shape) == (a.dtype, a.shape), name
        assert np.array_equal(b, a), name


def _torch_as_numpy(state: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_every_tensor_keeps_its_name_dtype_shape_and_values(tmp_path, fmt) -> None:
    import safetensors.numpy
    import safetensors.torch
    import torch

    run = _run(tmp_path / "run", _job(tmp_path / "run"), [_row(1), _row(2)])
    out = export_model(run, 1, fmt)
    assert out == run / "export" / f"model-round-000001{'.safetensors' if fmt == 'safetensors' else '.pt'}"
    want = _params()
    if fmt == "safetensors":
        _same(safetensors.numpy.load_file(str(out)), want)
        _same(_torch_as_numpy(safetensors.torch.load_file(str(out))), want)
    else:
        state = torch.load(out, weights_only=True)
        assert list(state) == list(want)  # a plain dict in state_dict order
        assert state["bn.num_batches_tracked"].shape == torch.Size([])
        _same(_torch_as_numpy(state), want)
    meta = _strict_json(out.with_suffix(".json"))
    assert (meta["round"], meta["format"], meta["file"]) == (1, fmt, out.name)
    assert meta["params"] == [{"name": k, "dtype": a.dtype.name, "shape": list(a.shape)} for k, a in want.items()]


def test_the_peft_adapter_keeps_every_tensor_exact(tmp_path) -> None:
    pytest.importorskip("peft")
    import safetensors.numpy

    run = tmp_path / "run"
    base = tmp_path / "base"
    job = _job(run, data={"dataset": "custom", "clients": 2},
               client={"path": "fedgrid.apps.llm:LoraClient", "options": {"base": str(base)}})
    adapter = OrderedDict([
        ("base_model.model.h.0.attn.c_attn.lora_A.default.weight", np.ones((4, 8), np.float32)),
        ("base_model.model.h.0.attn.c_attn.lora_B.default.weight", np.zeros((8, 4), np.float32)),
        ("base_model.model.h.0.attn.c_attn.lora_B.default.steps", np.array(3, np.int64)),
        ("base_model.model.h.0.attn.c_attn.lora_B.default.scale", np.array(0.5, np.float32)),
    ])
    _run(run, job, [_row(1, base_name="tiny", base_sha256="ab" * 32)], params=adapter)
    out = export_model(run, fmt="peft")
    assert out == run / "export" / "adapter-round-000001"
    want = OrderedDict((k.replace(".default", ""), a) for k, a in adapter.items())  # PEFT's names
    _same(safetensors.numpy.load_file(str(out / "adapter_model.safetensors")), want)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    meta = _strict_json(out / "fedgrid.json")
    assert meta["base"] == {"name": "tiny", "sha256": "ab" * 32, "path": str(base)}
    assert meta["client"] == {"builtin": False, **job["client"]}
    assert meta["client"]["options"] == {"base": str(base)}
    assert [p["name"] for p in meta["params"]] == list(want)
    assert meta["params"][2] == {"name": "base_model.model.h.0.attn.c_attn.lora_B.steps", "dtype": "int64",
                                 "shape": []}


def test_a_custom_client_run_names_its_client_and_every_metric_of_the_round(tmp_path) -> None:
    import safetensors

    run = tmp_path / "run"
    options = {"lr_decay": 0.5, "source": "s3://bucket/data", "layers": [64, 10]}
    job = _job(run, data={"dataset": "custom", "clients": 2},
               client={"path": "numpy_client:NumpyLogReg", "options": options})
    fed = {"fed_clients": [{"client": 0, "site": "a", "examples": 10, "metrics": [{"name": "mae", "value": 0.2}]}],
           "fed_failures": [], "fed_s": 0.25, "fed_examples": 10}
    rows = [_row(1, train_drift=0.01),  # a client metric only round 1 reported: null in round 2
            _row(2, test_accuracy=None, test_loss=None, train_mae=0.3, fed_mae=0.2, fed_mae_min=0.1,
                 fed_mae_p10=float("nan"), dp_epsilon=1.5, **fed)]
    out = export_model(_run(run, job, rows), fmt="safetensors")
    meta = _strict_json(out.with_suffix(".json"))
    assert meta["round"] == 2 and meta["job"] == "exp"
    assert meta["client"] == {"builtin": False, **job["client"]}  # the job's whole client: block
    assert (meta["client"]["path"], meta["client"]["options"]) == ("numpy_client:NumpyLogReg", options)
    # the model block is the schema's default here, not what the params are
    assert not {"model", "model_kwargs", "rebuild", "input_shape"} & set(meta)
    m = meta["metrics"]
    assert {k: m[k] for k in ("train_mae", "fed_mae", "fed_mae_min", "fed_s", "fed_examples", "dp_epsilon",
                              "train_loss", "clients_ok", "examples")} == {
        "train_mae": 0.3, "fed_mae": 0.2, "fed_mae_min": 0.1, "fed_s": 0.25, "fed_examples": 10, "dp_epsilon": 1.5,
        "train_loss": 0.7, "clients_ok": 2, "examples": 20}
    assert m["fed_mae_p10"] is None  # NaN
    assert m["train_drift"] is None and m["test_accuracy"] is None  # columns the round left empty
    assert "train_drift" in m and meta["test_accuracy"] is None
    assert not {"round", "fed_clients", "fed_failures", "updates", "participants", "failures"} & set(m)
    assert all(v is None or isinstance(v, int | float) for v in m.values())
    # the same facts ride in the safetensors header
    with safetensors.safe_open(str(out), "np") as f:
        header = {k: json.loads(v) for k, v in f.metadata().items()}
    assert header["client"] == meta["client"] and header["metrics"] == m


def test_a_round_the_table_lost_takes_its_metrics_from_the_checkpoint(tmp_path) -> None:
    run = tmp_path / "run"
    job = _job(run, client={"path": "numpy_client:NumpyLogReg", "options": {}})
    out = export_model(_run(run, job, [_row(1), _row(2, fed_mae=0.4)], in_table=False), fmt="torch")
    meta = _strict_json(out.with_suffix(".json"))
    assert meta["round"] == 2 and meta["metrics"]["fed_mae"] == 0.4 and meta["metrics"]["test_accuracy"] == 0.75


def test_the_builtin_client_says_so_and_gives_its_model(tmp_path) -> None:
    run = tmp_path / "run"
    job = _job(run, model={"name": "cnn", "kwargs": {"width": 8}})
    out = export_model(_run(run, job, [_row(1, fed_accuracy=0.8)]), fmt="safetensors")
    meta = _strict_json(out.with_suffix(".json"))
    assert meta["client"] == {"builtin": True, "path": "fedgrid.apps.builtin:BuiltinClient",
                              "model": {"name": "cnn", "kwargs": {"width": 8}}}
    assert (meta["model"], meta["model_kwargs"], meta["input_shape"], meta["num_classes"]) == (
        "cnn", {"width": 8}, [1, 8, 8], 10)
    assert meta["rebuild"] == "fedgrid.apps.models.build('cnn', (1, 8, 8), 10, {'width': 8})"
    assert (meta["test_accuracy"], meta["metrics"]["fed_accuracy"]) == (0.75, 0.8)
    assert "base" not in meta


def test_round_zero_has_no_row_and_exports_with_no_metrics(tmp_path) -> None:
    run = tmp_path / "run"
    out = export_model(_run(run, _job(run), [_row(1)]), 0, "torch")
    meta = _strict_json(out.with_suffix(".json"))
    assert meta["round"] == 0 and meta["metrics"] == {} and meta["test_accuracy"] is None


def test_errors_stay_one_line(tmp_path, cli) -> None:
    run = tmp_path / "run"
    params = _params()
    params["phase"] = np.array([1 + 2j], dtype=np.complex128)
    _run(run, _job(run), [_row(1)], params=params)
    rc, _, err = cli("export", run, "--round", "9")
    assert rc == 2 and err.count("\n") == 1 and "round 9 has no checkpoint (rounds on disk: 0..1" in err
    rc, _, err = cli("export", run, "--format", "safetensors")
    assert rc == 2 and err.count("\n") == 1
    assert "phase has dtype complex128, which the format cannot hold without a cast" in err
    assert not (run / "export" / "model-round-000001.safetensors").exists()
    rc, out, err = cli("export", run, "--format", "torch")  # torch holds complex128 as itself
    assert rc == 0, err
    rc, _, err = cli("export", run, "--format", "peft")
    assert rc == 2 and err.count("\n") == 1 and "did not fine-tune an adapter" in err
    assert math.isclose(_strict_json(run / "export" / "model-round-000001.json")["metrics"]["seconds"], 0.5)


# --- --client: one client's personalized model ------------------------------------------------------------

def _personal_tree() -> dict[str, Any]:
    """What a FedBN + FedPer client keeps at its site: its own state, and its values of the personal
    layers (a float16 head, a float64 statistic, a 0-d int64 counter: exact through every format)."""
    return {"client": {"step": 3, "opt": {"lr": 0.1}},
            "personal": {"bn.running_mean": np.array([5.0, 6.0]), "bn.num_batches_tracked": np.array(11, np.int64),
                         "head.weight": np.full((3, 4), 2.5, np.float16)},
            "ditto": {}}


def _ditto_tree() -> dict[str, Any]:
    """A Ditto client's personal model: every param of its own but `mask` (the global one stands in)."""
    model = OrderedDict((k, a + np.ones_like(a) if a.dtype.kind in "fiu" else a) for k, a in _params().items()
                        if k != "mask")
    return {"client": None, "personal": {}, "ditto": model}


def _client_run(run: Path, personal: dict[str, Any] | None, tree: dict[str, Any] | None = None,
                who: int = 1, params: OrderedDict[str, np.ndarray] | None = None,
                **over: Any) -> tuple[Path, str]:
    """A run of two rounds whose checkpoints record client `who`'s state version, as the driver does
    (profiles.keep_state on an accepted update), with the object written where its site writes it:
    the run's store area (the default store, <run_dir>/store). Returns the run and the digest."""
    job = _job(run, personal=personal, **over)
    area = dataplane.run_area(dataplane.store_url(str(run / "store")), Job.model_validate(job), run)
    ref = Store(area).put_addressed(codec.encode(tree or _personal_tree()), FOLDER.format(client=who))
    profiles = prof.empty(2)
    prof.keep_state(profiles, ClientUpdate(client=who, site="a", round=1, num_examples=10, params={},
                                           extras={"state": {"sha256": ref.sha256, "nbytes": ref.nbytes}}))
    rows = [_row(1), _row(2, **({"base_name": "tiny", "base_sha256": "ab" * 32} if "client" in over else {}))]
    _run(run, job, rows, params=params, profiles=profiles)
    return run, ref.sha256


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_a_client_gets_the_global_model_with_its_personal_layers(tmp_path, fmt) -> None:
    import safetensors.numpy
    import torch

    run, sha = _client_run(tmp_path / "run", {"layers": ["bn.*", "head.*"]})
    out = export_model(run, 2, fmt, client=1)
    assert out.name == f"model-round-000002-client-00001{'.safetensors' if fmt == 'safetensors' else '.pt'}"
    want = _params()
    want.update(_personal_tree()["personal"])
    got = (safetensors.numpy.load_file(str(out)) if fmt == "safetensors"
           else _torch_as_numpy(torch.load(out, weights_only=True)))
    _same(got, want)
    meta = _strict_json(out.with_suffix(".json"))
    assert meta["personalized"] == {"client": 1, "state_sha256": sha, "ditto": False,
                                    "personal_layers": ["bn.running_mean", "bn.num_batches_tracked", "head.weight"]}
    assert meta["round"] == 2 and [p["name"] for p in meta["params"]] == list(want)
    # the global export beside it is untouched by the client's
    _same(safetensors.numpy.load_file(str(export_model(run, 2, "safetensors"))), _params())
    assert "personalized" not in _strict_json(run / "export" / "model-round-000002.json")


def test_a_ditto_client_gets_its_whole_personal_model(tmp_path, cli) -> None:
    import torch

    run, sha = _client_run(tmp_path / "run", {"ditto": {"lam": 0.5}}, _ditto_tree())
    rc, _, err = cli("export", run, "--client", 1, "--format", "torch")
    assert rc == 0, err
    out = run / "export" / "model-round-000002-client-00001.pt"
    want = OrderedDict((k, _ditto_tree()["ditto"].get(k, a)) for k, a in _params().items())
    state = torch.load(out, weights_only=True)
    assert list(state) == list(want)
    _same(_torch_as_numpy(state), want)
    assert not np.array_equal(state["conv.weight"].numpy(), _params()["conv.weight"])
    meta = _strict_json(out.with_suffix(".json"))
    assert meta["personalized"] == {"client": 1, "state_sha256": sha, "personal_layers": [], "ditto": True}


def test_a_lora_client_gets_its_personal_adapter_layers_for_peft(tmp_path) -> None:
    pytest.importorskip("peft")
    import safetensors.numpy

    run = tmp_path / "run"
    adapter = OrderedDict([
        ("base_model.model.h.0.attn.c_attn.lora_A.default.weight", np.ones((4, 8), np.float32)),
        ("base_model.model.h.0.attn.c_attn.lora_B.default.weight", np.zeros((8, 4), np.float32)),
    ])
    mine = np.full((8, 4), 0.25, np.float32)
    tree = {"client": None, "personal": {"base_model.model.h.0.attn.c_attn.lora_B.default.weight": mine}, "ditto": {}}
    _client_run(run, {"layers": ["*lora_B*"]}, tree, params=adapter, data={"dataset": "custom", "clients": 2},
                client={"path": "fedgrid.apps.llm:LoraClient", "options": {"base": str(tmp_path / "base")}})
    out = export_model(run, fmt="peft", client=1)
    assert out == run / "export" / "adapter-round-000002-client-00001"
    got = safetensors.numpy.load_file(str(out / "adapter_model.safetensors"))
    assert np.array_equal(got["base_model.model.h.0.attn.c_attn.lora_B.weight"], mine)
    assert np.array_equal(got["base_model.model.h.0.attn.c_attn.lora_A.weight"], np.ones((4, 8), np.float32))
    meta = _strict_json(out / "fedgrid.json")
    assert meta["personalized"]["personal_layers"] == ["base_model.model.h.0.attn.c_attn.lora_B.default.weight"]


def test_a_moved_run_dir_still_finds_its_store_area(tmp_path) -> None:
    import safetensors.numpy

    run, _ = _client_run(tmp_path / "run", {"layers": ["head.*"]})
    moved = run.rename(tmp_path / "moved")  # the area's name hashes the path the run had
    out = export_model(moved, fmt="safetensors", client=1)
    assert safetensors.numpy.load_file(str(out))["head.weight"].tolist() == [[2.5] * 4] * 3


def test_client_export_refusals_are_one_line(tmp_path, cli) -> None:
    def refused(run: Path, *args: object) -> str:
        rc, out, err = cli("export", run, *args)
        assert rc == 2 and err.count("\n") == 1 and not out, (rc, out, err)
        assert not list((run / "export").glob("*client*"))  # nothing half written
        return err

    # client state recorded (a stateful client) but nothing personal: the global model is the client's
    plain, _ = _client_run(tmp_path / "plain", None)
    assert "run 'exp' keeps no personal layers or model: nothing to export for a client" in refused(
        plain, "--client", 1)
    run, sha = _client_run(tmp_path / "run", {"layers": ["head.*"]})
    assert "client 0 has not trained yet in round 2" in refused(run, "--client", 0)
    assert "client 1 has not trained yet in round 0" in refused(run, "--client", 1, "--round", 0)
    err = refused(run, "--client", 2)
    assert "--client 2: no such client" in err and "0..1" in err
    assert "no such client" in refused(run, "--client", -1)
    area = dataplane.run_area(dataplane.store_url(str(run / "store")), Job.model_validate(_job(run)), run)
    obj = Path(area) / FOLDER.format(client=1) / sha
    obj.write_bytes(obj.read_bytes()[:-1])  # truncated: the size the checkpoint names no longer matches
    err = refused(run, "--client", 1)
    assert f"client 1's state (round 2, sha256 {sha[:12]}) cannot be read; looked in {area}" in err
    assert "expected" in err
    obj.unlink()  # the store wiped, or not reachable from this machine
    err = refused(run, "--client", 1)
    assert f"looked in {area}" in err and "object not found" in err
