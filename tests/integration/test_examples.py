"""The client-code examples (examples/nextchar, examples/diabetes, examples/cancer) run briefly from
their own job files on real executors: each one's own metrics reach the rounds table as
fed_<name> / train_<name> columns, in a sane range, and the model learns."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedgrid

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FORTUNES = Path("/usr/share/games/fortunes")
LOCAL = "sites=[{name: here, executor: {kind: local, workers: 2}}]"


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    """The example packages importable here and, through PYTHONPATH, in HTEX worker processes."""
    folders = [str(EXAMPLES / name) for name in ("nextchar", "diabetes", "cancer")]
    for f in folders:
        monkeypatch.syspath_prepend(f)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*folders, *filter(None, [os.environ.get("PYTHONPATH")])]))


def run(example: str, tmp_path: Path, *overrides: str) -> list[dict]:
    job = fedgrid.load_job(EXAMPLES / example / "job.yaml", [f"checkpoint.dir={tmp_path / 'run'}", *overrides])
    return fedgrid.run(job, quiet=True).rows


@pytest.mark.skipif(not FORTUNES.is_dir(), reason=f"{FORTUNES} missing: the nextchar example needs Debian's "
                    "fortunes package (apt-get install -y fortunes)")
def test_nextchar_lstm_learns_next_characters_on_fortunes(tmp_path):
    from nextchar import data
    from nextchar.client import DEFAULTS

    # 4 clients (each every 4th fortune file), few rounds but more local epochs; FedProx as the job says
    rows = run("nextchar", tmp_path, "rounds=3", "data.clients=4", "train.epochs=15", "round.min_clients=4", LOCAL)
    assert [r["round"] for r in rows] == [1, 2, 3]
    held = [data.client_text(c, 4)[1][:DEFAULTS["eval_chars"] + 1] for c in range(4)]
    chars = sum(len(h) - 1 for h in held)
    for r in rows:
        assert r["fed_examples"] == chars and len(r["fed_clients"]) == 4 and not r["fed_failures"]
        assert 0.0 <= r["fed_accuracy"] <= 1.0 and 0.0 <= r["train_accuracy"] <= 1.0
        assert 0.0 < r["fed_loss"] < np.log(data.VOCAB) + 1.0  # about uniform guessing at worst
    losses = [r["fed_loss"] for r in rows]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.2
    # above chance: better than always guessing the commonest held-out character (the space)
    commonest = max(np.bincount(np.concatenate([h[1:] for h in held])) / chars)
    assert rows[-1]["fed_accuracy"] > commonest + 0.05


@pytest.mark.skipif(not FORTUNES.is_dir(), reason=f"{FORTUNES} missing (apt-get install -y fortunes)")
def test_nextchar_central_baseline_learns(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("nextchar_central", EXAMPLES / "nextchar" / "central.py")
    central = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(central)
    out = central.main(["--epochs", "2", "--clients", "4"])
    assert [r["epoch"] for r in out] == [1, 2] and "held-out loss" in capsys.readouterr().out
    assert out[-1]["held_loss"] < out[0]["held_loss"] and 0.25 < out[-1]["held_accuracy"] <= 1.0


def test_diabetes_regression_reports_rmse_and_r2_per_age_band(tmp_path):
    rows = run("diabetes", tmp_path, "rounds=8", LOCAL)
    for r in rows:
        # four age bands (117, 97, 125, 103 patients), a quarter of each held out
        assert sorted(c["examples"] for c in r["fed_clients"]) == [24, 26, 29, 31]
        assert sum(u["examples"] for u in r["updates"]) == 442 - 110
        assert 20.0 < r["fed_rmse"] < 150.0 and 0.0 < r["fed_mae"] <= r["fed_rmse"]  # target units (25..346)
        assert r["fed_r2"] <= 1.0 and r["train_r2"] <= 1.0 and r["train_rmse"] > 0.0
        assert r["fed_r2_min"] <= r["fed_r2"]
        assert r["test_accuracy"] is None  # no central test set: the data stays at the clinics
    first, last = rows[0], rows[-1]
    assert last["fed_rmse"] < first["fed_rmse"] - 10.0 and last["fed_loss"] < first["fed_loss"]
    assert last["fed_r2"] > 0.25 > first["fed_r2"]  # explains a good share of the variance


def test_cancer_sklearn_client_without_torch_learns(tmp_path):
    # the client module pulls in no torch at all
    probe = "import sys, cancer.client; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", probe], check=True)
    rows = run("cancer", tmp_path, "rounds=6",
               "sites=[{name: hospital, executor: {kind: local, workers: 2}}]")
    assert [r["round"] for r in rows] == list(range(1, 7)) and all(r["clients_ok"] == 6 for r in rows)
    for r in rows:
        assert len(r["fed_clients"]) == 6 and not r["fed_failures"]
        for m in ("auc", "accuracy", "sensitivity"):
            assert 0.0 <= r[f"fed_{m}"] <= 1.0 and 0.0 <= r[f"fed_{m}_min"] <= r[f"fed_{m}"]
        assert r["fed_loss"] > 0.0 and 0.0 <= r["train_auc"] <= 1.0
        assert {m["name"] for u in r["updates"] for m in u["metrics"]} >= {"auc", "loss", "accuracy"}
    assert rows[-1]["fed_loss"] < rows[0]["fed_loss"]
    assert rows[-1]["fed_auc"] > 0.85 and rows[-1]["fed_accuracy"] > 0.7  # chance: AUC 0.5, accuracy ~0.63 (all benign)
