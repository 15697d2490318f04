"""The user guide's client snippets run as written: its `mypkg` files are copied out of
docs/guide/client-api.md and personalization.md into a package, and a short run of each (on
threads) trains; the stateful client's Adam state continues across rounds and across
`--rounds +N`; the personalization block is a valid job block."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import yaml

from fedgrid.apps import state as codec
from fedgrid.apps.sitestate import FOLDER
from fedgrid.apps.store import Ref, fetch
from fedgrid.flow.clients import profiles as prof
from fedgrid.flow.config import parse_job
from fedgrid.flow.config.schema import PersonalSpec
from fedgrid.flow.persist import checkpoint as ckpt
from fedgrid.flow.rounds.runner import run

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide"


def _blocks(lang: str) -> list[str]:
    text = "".join((GUIDE / page).read_text() for page in ("client-api.md", "personalization.md"))
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _package(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "src" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    files = [b for b in _blocks("python") if b.startswith("# mypkg/")]
    assert {b.splitlines()[0] for b in files} >= {"# mypkg/fl.py", "# mypkg/stateful.py"}
    for b in files:
        (pkg / b.splitlines()[0][len("# mypkg/"):]).write_text(b)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)


def _job(make_job, run_dir: Path, client: str, rounds: int) -> dict:
    job = make_job(run_dir, rounds=rounds, client=client, data={"dataset": "custom", "clients": 3},
                   sites=[{"name": "a", "executor": {"kind": "local", "workers": 2}, "clients": 3}],
                   train={"epochs": 1, "batch_size": 32, "lr": 0.01},
                   round={"min_clients": 3, "deadline_s": 60, "federated_every": 2})
    job.pop("model")
    return job


def test_the_readme_clients_run_as_written(tmp_path, make_job, monkeypatch):
    _package(tmp_path, monkeypatch)
    first = run(parse_job(_job(make_job, tmp_path / "plain", "mypkg.fl:MyClient", 2)), quiet=True)
    assert first.rounds_done == 2 and np.isfinite(first.last["train_mse"]) and "fed_mse" in first.last

    run_dir = tmp_path / "stateful"
    run(parse_job(_job(make_job, run_dir, "mypkg.stateful:MyStatefulClient", 2)), quiet=True)
    more = run(parse_job(_job(make_job, run_dir, "mypkg.stateful:MyStatefulClient", 2)), more=2, quiet=True)
    assert more.rounds_done == 4 and more.last["train_round"] == 4
    last = ckpt.read_round(ckpt.round_path(run_dir, 4))
    area = next((run_dir / "store").iterdir())
    have, _ = prof.state_of(last.profiles, 0)
    state = codec.decode(fetch(Ref(f"{area}/{FOLDER.format(client=0)}/{have['sha256']}", have["sha256"],
                                   have["nbytes"])))
    # 8 batches a round (256 rows, batch 32) for 4 rounds, across two runs: Adam's step count went on
    assert float(state["client"]["opt"]["state"][0]["step"]) == 4 * 8
    assert last.horizon == [[0, 2], [2, 4]]


def test_the_readme_personalization_block_is_a_job_block():
    blocks = [yaml.safe_load(b) for b in _blocks("yaml") if b.startswith("personal:")]
    assert blocks and PersonalSpec.model_validate(blocks[0]["personal"]).layers == ["norm"]
