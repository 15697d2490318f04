"""`fedgrid export RUN_DIR [--round N] --format safetensors|torch`: the global model, for use
outside fedgrid.

The file holds the model's ``state_dict`` exactly as the round checkpoint has it (names, dtypes,
shapes), so ``model.load_state_dict(...)`` takes it as is:

- safetensors: ``safetensors.torch.load_file(path)``. No pickle, so it is safe to load from a
  file someone else wrote; the run's facts ride in its header metadata.
- torch: ``torch.load(path, weights_only=True)``, a plain dict of tensors.

A ``.json`` beside either says which job, round and model it is (with the accuracy recorded for
that round) and how to rebuild the architecture with ``fedgrid.apps.models.build``; for a
fine-tuning run, also the frozen base the params belong to (name, path, sha256).

- peft (a LoRA run of fedgrid.apps.llm): a directory with ``adapter_model.safetensors`` and
  ``adapter_config.json``, which ``peft.PeftModel.from_pretrained(base_model, path)`` loads.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from fedgrid import __version__
from fedgrid.flow.persist import checkpoint as ckpt

FORMATS = {"safetensors": ".safetensors", "torch": ".pt", "peft": ""}


def load_round(run_dir: Path, rnd: int | None = None) -> ckpt.RoundState:
    """Round `rnd` (default: the newest that verifies); ValueError names the rounds there are."""
    if rnd is None:
        state, _ = ckpt.latest_valid(run_dir, quarantine=False)
        if state is None:
            raise ValueError(f"{run_dir}: no round checkpoint found (rounds/round-*.arrow)")
        return state
    path = ckpt.round_path(run_dir, rnd)
    if not path.exists():
        have = [r for r, _ in ckpt.round_files(run_dir)]
        span = f"{have[0]}..{have[-1]}" if have else "none"
        raise ValueError(f"{run_dir}: round {rnd} has no checkpoint (rounds on disk: {span}; "
                         f"checkpoint.keep may have pruned it)")
    try:
        return ckpt.read_round(path)
    except ckpt.CheckpointError as e:
        raise ValueError(f"{path}: {e}") from None


def describe(state: ckpt.RoundState) -> dict[str, Any]:
    """What the exported file is: job, round, model and how to rebuild it, recorded accuracy."""
    from fedgrid.apps import datasets

    job = state.job
    model = job.get("model", {})
    info: dict[str, Any] = {"fedgrid_version": __version__, "job": job.get("name"), "round": state.round,
                            "model": model.get("name"), "model_kwargs": model.get("kwargs", {}),
                            "test_accuracy": state.row.get("test_accuracy"),
                            "test_loss": state.row.get("test_loss")}
    if state.row.get("base_sha256"):
        info["base"] = {"name": state.row.get("base_name"), "sha256": state.row["base_sha256"],
                        "path": ((job.get("client") or {}).get("options") or {}).get("base")}
    try:
        shape, classes = datasets.meta(job["data"], None)
        info.update(input_shape=list(shape), num_classes=classes)
    except (KeyError, OSError, ValueError, TypeError):  # data not reachable from here: leave them out
        pass
    if "input_shape" in info:
        info["rebuild"] = (f"fedgrid.apps.models.build({info['model']!r}, {tuple(info['input_shape'])}, "
                           f"{info['num_classes']}, {info['model_kwargs']!r})")
    return info


def export_model(run_dir: Path, rnd: int | None = None, fmt: str = "safetensors", out: Path | None = None) -> Path:
    """Write the global model of round `rnd` (default newest) and its .json; returns the model file."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {sorted(FORMATS)}, got {fmt!r}")
    state = load_round(run_dir, rnd)
    params = OrderedDict((k, np.ascontiguousarray(v)) for k, v in state.params.items())
    info = describe(state)
    out = out or run_dir / "export" / f"{'adapter' if fmt == 'peft' else 'model'}-round-{state.round:06d}{FORMATS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "peft":
        return _peft(state, params, info, out)
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file(params, str(out), metadata={k: json.dumps(v) for k, v in info.items()})
    else:
        import torch

        torch.save(OrderedDict((k, torch.from_numpy(v.copy())) for k, v in params.items()), out)
    out.with_suffix(".json").write_text(json.dumps({**info, "file": out.name, "format": fmt}, indent=1) + "\n")
    return out


def _peft(state: ckpt.RoundState, params: dict[str, np.ndarray], info: dict[str, Any], out: Path) -> Path:
    """The adapter as PEFT saves one: its weights under PEFT's names and its LoraConfig."""
    client = state.job.get("client") or {}
    if not str(client.get("path", "")) or "base" not in info:
        raise ValueError("--format peft: this run did not fine-tune an adapter on a base (a fedgrid.apps.llm client)")
    try:
        from safetensors.numpy import save_file

        from fedgrid.apps.llm import adapter_state, lora_config, options
    except ImportError as e:
        raise ValueError(f"--format peft needs the llm extra: pip install 'fedgrid[llm]' ({e})") from None
    opts = options(client.get("options") or {})
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(params), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    lora_config(opts, info["base"]["path"]).save_pretrained(str(out))
    (out / "fedgrid.json").write_text(json.dumps({**info, "format": "peft"}, indent=1) + "\n")
    return out
