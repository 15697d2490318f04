"""Federated LoRA fine-tuning of a Hugging Face causal language model (extra ``fedgrid[llm]``).

Every site holds the same pre-trained base (its own copy, a ``save_pretrained`` directory), wraps
it in a PEFT LoRA adapter and trains only the adapter: the base's weights are frozen
(``requires_grad=False``), so they are never sent, aggregated or checkpointed. Only the adapter's
matrices cross the network each round. fedgrid checks each site's copy of the base against the
driver's (sha256) before the site trains.

Subclass :class:`LoraClient` and give it the text: ``texts()`` returns this client's token ids
for training and for held-out evaluation (the tokenizer is yours; fedgrid never downloads one).
Job file::

    client:
      path: mypkg.fl:MyLoraClient
      options: {base: /models/base, lora: {r: 8, alpha: 16, target_modules: [c_attn]}, seq_len: 64}

``base`` may hold ``{site}`` for a per-site path. ``fedgrid export RUN --format peft`` writes
``adapter_model.safetensors`` and ``adapter_config.json``, which ``peft.PeftModel.from_pretrained``
loads on the base.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from fedgrid.apps.client import Base, Client, Evaluation, Fit, load_trainable, trainable_params

DEFAULTS: dict[str, Any] = {"base": None, "base_name": None, "lora": {}, "seq_len": 64, "windows_per_epoch": 32,
                            "eval_windows": 32, "optimizer": "adamw", "clip": 1.0}
LORA: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None}
ADAPTER = "default"  # PEFT's adapter name: in the training model's parameter names, never in the files
# transformers builds a model under process-wide patches of torch's initialisers (empty weights,
# no init): two threads of one worker (a `local` site) building at once can leave one model with
# uninitialised weights, so models are built one at a time per process
_BUILD = threading.Lock()


def options(opts: dict[str, Any]) -> dict[str, Any]:
    if unknown := set(opts) - set(DEFAULTS):
        raise ValueError(f"unknown LoRA client option(s) {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **opts, "lora": {**LORA, **(opts.get("lora") or {})}}
    if unknown := set(out["lora"]) - set(LORA):
        raise ValueError(f"unknown lora option(s) {sorted(unknown)}; expected some of {sorted(LORA)}")
    if not out["base"]:
        raise ValueError("the LoRA client needs options.base: the directory of the pre-trained base model")
    return out


def lora_config(opts: dict[str, Any], base_path: str | None = None) -> Any:
    """The PEFT LoraConfig of these options: the same at every site, in the driver and in export."""
    from peft import LoraConfig

    lo = opts["lora"]
    return LoraConfig(r=int(lo["r"]), lora_alpha=int(lo["alpha"]), lora_dropout=float(lo["dropout"]),
                      target_modules=lo["target_modules"], task_type="CAUSAL_LM",
                      base_model_name_or_path=base_path)


def adapter_state(params: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The training model's adapter params under the names PEFT saves and loads (without the adapter name)."""
    return OrderedDict((k.replace(f".{ADAPTER}", ""), np.ascontiguousarray(v)) for k, v in params.items())


def windows(ids: np.ndarray, seq_len: int, count: int, rng: np.random.Generator) -> Any:
    """`count` random windows of `seq_len` tokens (a causal LM predicts each from those before)."""
    import torch

    seq_len = min(seq_len, len(ids))
    starts = rng.integers(0, len(ids) - seq_len + 1, size=count)
    return torch.from_numpy(np.stack([ids[s:s + seq_len] for s in starts]).astype(np.int64))


def held_windows(ids: np.ndarray, seq_len: int, count: int) -> Any:
    """The held-out text in consecutive windows (at most `count`): the same every round and run."""
    import torch

    seq_len = min(seq_len, len(ids))
    n = max(1, min(count, len(ids) // seq_len))
    return torch.from_numpy(ids[:n * seq_len].reshape(n, seq_len).astype(np.int64))


def mean_loss(model: Any, batches: Any) -> tuple[float, int]:
    """Token-weighted cross-entropy of next-token prediction over `batches`, and the tokens predicted."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for b in batches:
            n = b.numel() - b.shape[0]  # every token but each window's first is predicted
            total += float(model(input_ids=b, labels=b).loss) * n
            tokens += n
    model.train()
    return total / max(tokens, 1), tokens


class LoraClient(Client):
    """A causal LM with a LoRA adapter; `texts()` gives the token ids (subclass it)."""

    supports = {"prox", "steps"}

    def __init__(self, ctx: Any):
        super().__init__(ctx)
        self.opts = options(ctx.options)
        self._peft: Any = None

    def texts(self) -> tuple[np.ndarray, np.ndarray]:
        """(training, held-out) token ids of this client, from its own data."""
        raise NotImplementedError("subclass LoraClient and return this client's token ids from texts()")

    def base(self) -> Base:
        path = str(self.opts["base"]).format(site=self.ctx.site)
        return Base(name=self.opts["base_name"] or Path(path).name, path=path)

    def model(self) -> Any:
        """The base with the adapter, built once per worker: frozen base, trainable adapter."""
        if self._peft is None:
            import torch
            from peft import get_peft_model
            from transformers import AutoModelForCausalLM

            torch.set_num_threads(1)
            with _BUILD:
                base = AutoModelForCausalLM.from_pretrained(self.base().path, local_files_only=True)
                torch.manual_seed(self.ctx.seed)  # the adapter's initial A matrices: the same everywhere
                self._peft = get_peft_model(base, lora_config(self.opts))
        return self._peft

    def init_params(self):  # noqa: ANN201 - Params
        return trainable_params(self.model())

    def warm(self) -> None:
        self.model()
        self._data()

    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "_texts"):
            self._texts = self.texts()
        return self._texts

    def train(self, params, work) -> Fit:  # noqa: ANN001 - Params, Work
        import torch

        model = self.model()
        load_trainable(model, params)
        fix = work.corrections(model)
        ids, _ = self._data()
        per_epoch = int(self.opts["windows_per_epoch"])
        bs = int(work.settings["batch_size"])
        budget = work.budget(work.batches_per_epoch(per_epoch))
        trainable = [p for p in model.parameters() if p.requires_grad]
        lr, wd = float(work.settings["lr"]), float(work.settings.get("weight_decay", 0.0))
        opt = (torch.optim.AdamW(trainable, lr=lr, weight_decay=wd) if self.opts["optimizer"] == "adamw" else
               torch.optim.SGD(trainable, lr=lr, momentum=float(work.settings.get("momentum", 0.0))))
        rng = np.random.default_rng(work.seed)
        steps, losses = 0, []
        model.train()
        while steps < budget:
            for batch in windows(ids, int(self.opts["seq_len"]), per_epoch, rng).split(bs):
                if steps >= budget:
                    break
                opt.zero_grad(set_to_none=True)
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                fix.apply()
                torch.nn.utils.clip_grad_norm_(trainable, float(self.opts["clip"]))
                opt.step()
                losses.append(float(loss.detach()))
                steps += 1
        mean = float(np.mean(losses)) if losses else float("nan")
        metrics = {"loss": mean, "perplexity": math.exp(min(mean, 50.0))} if losses else {}
        return Fit(trainable_params(model), per_epoch, metrics, steps=steps)

    def evaluate(self, params) -> Evaluation:  # noqa: ANN001 - Params
        model = self.model()
        load_trainable(model, params)
        _, held = self._data()
        loss, tokens = mean_loss(model, held_windows(held, int(self.opts["seq_len"]),
                                                     int(self.opts["eval_windows"])).split(16))
        return Evaluation(tokens, {"loss": loss, "perplexity": math.exp(min(loss, 50.0))})
