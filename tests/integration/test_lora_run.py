"""Federated LoRA fine-tuning (fedgrid.apps.llm, examples/lora) in a real run: only the adapter
travels and is checkpointed, the PEFT export loads on the base and gives the recorded evaluation
loss, and a site whose copy of the base differs fails its clients with the reason."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from fedgrid.flow.config import parse_job
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.rounds.runner import run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# find_spec, not importorskip: importing peft (transformers with it) costs about 3.6 s of CPU, which
# every test process would pay at collection, not only the one that runs these tests
if importlib.util.find_spec("peft") is None:
    pytest.skip("needs the llm extra (peft)", allow_module_level=True)
if not Path("/usr/share/games/fortunes").is_dir():
    pytest.skip("needs Debian's fortunes (apt-get install fortunes; .ci/run installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def paths(tmp_path_factory, monkeypatch_module):
    """The example's modules importable here and at the sites, and a tiny base for two sites:
    site a's copy the driver's, site b's with one weight changed."""
    for p in (EXAMPLES / "lora", EXAMPLES / "nextchar"):
        monkeypatch_module.syspath_prepend(str(p))
    import os

    monkeypatch_module.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLES / "lora"), str(EXAMPLES / "nextchar"),
                                                             os.environ.get("PYTHONPATH", "")]))
    from pretrain import pretrain

    root = tmp_path_factory.mktemp("lora")
    pretrain(root / "base-a", steps=20)
    shutil.copytree(root / "base-a", root / "base-b")
    from safetensors.numpy import load_file, save_file

    w = load_file(str(root / "base-b" / "model.safetensors"))
    name = sorted(w)[0]
    w[name] = w[name] + np.float32(1e-3)
    save_file(w, str(root / "base-b" / "model.safetensors"), metadata={"format": "pt"})
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_only_the_adapter_travels_and_its_peft_export_gives_the_recorded_loss(paths, make_job):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedgrid.apps.llm import held_windows, mean_loss

    sites = [{"name": n, "executor": {"kind": "local", "workers": 2}, "clients": 2} for n in "ab"]
    job = parse_job(make_job(paths / "run", rounds=2, sites=sites, client={
        "path": "lora_fortunes.client:FortuneLoraClient",
        "options": {"base": str(paths / "base-{site}"), "lora": {"r": 2, "alpha": 4, "target_modules": ["c_attn"]},
                    "seq_len": 32, "windows_per_epoch": 8, "eval_windows": 4}},
        data={"dataset": "custom", "clients": 4, "partition": {"kind": "none"}},
        train={"epochs": 1, "batch_size": 4, "lr": 0.01, "momentum": 0.0},
        round={"min_clients": 2, "deadline_s": 300, "federated_every": 1}))
    res = run(job, quiet=True)
    rows = res.rows
    # site b's base differs: its clients fail, in training and in evaluation, with the reason
    for r in rows:
        assert sorted(u["client"] for u in r["updates"]) == [0, 1]
        assert {f["client"] for f in r["failures"]} == {2, 3}
        assert all("base weights differ" in f["reason"] for f in r["failures"])
        assert sorted(c["client"] for c in r["fed_clients"]) == [0, 1]
    # only the adapter: in the round files and on the wire
    params = ckpt.read_round(ckpt.round_path(res.run_dir, 2)).params
    assert params and all("lora_" in k for k in params)
    adapter = sum(a.nbytes for a in params.values())
    assert all(u["bytes_up"] == adapter for r in rows for u in r["updates"])
    assert rows[-1]["base_sha256"] and rows[-1]["base_name"] == "base-a"

    from fedgrid.flow.commands.export import export_model

    out = export_model(res.run_dir, fmt="peft")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(paths / "base-a")), str(out))
    from lora_fortunes import data

    tokens = loss = 0.0
    for c in (0, 1):
        ell, n = mean_loss(model, held_windows(data.client_text(c)[1], 32, 4).split(16))
        loss, tokens = loss + ell * n, tokens + n
    assert loss / tokens == pytest.approx(rows[-1]["fed_loss"], rel=1e-5)
    assert sys.modules.get("lora_fortunes") is not None
