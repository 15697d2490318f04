"""Play the pre-trained base: a tiny GPT-2 built from a config (no hub download), trained
centrally on the fortune files that no client holds, saved with ``save_pretrained``.

    PYTHONPATH=examples/lora:examples/nextchar python examples/lora/pretrain.py --out runs/lora-base

Every site then needs the same directory (copy it; fedgrid checks each copy's sha256).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from lora_fortunes import data
from transformers import GPT2Config, GPT2LMHeadModel

from fedgrid.apps.llm import held_windows, mean_loss, windows


def pretrain(out: Path, steps: int = 300, seq_len: int = 64, batch: int = 32, seed: int = 0,
             size: dict | None = None) -> dict[str, float]:
    """Train the base for `steps` AdamW steps and save it in `out`; returns its held-out loss."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # (a second thread spins against the sites sharing the cores)
    cfg = GPT2Config(vocab_size=data.VOCAB, n_positions=seq_len, bos_token_id=0, eos_token_id=0,
                     **(size or {"n_embd": 64, "n_layer": 2, "n_head": 4}))
    model = GPT2LMHeadModel(cfg)
    ids = data.pretrain_text()
    held, train = ids[-20_000:], ids[:-20_000]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        b = windows(train, seq_len, batch, rng)
        opt.zero_grad(set_to_none=True)
        model(input_ids=b, labels=b).loss.backward()
        opt.step()
    loss, _ = mean_loss(model, held_windows(held, seq_len, 64).split(16))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    return {"params": sum(p.numel() for p in model.parameters()), "held_loss": loss,
            "held_perplexity": math.exp(loss), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/lora-base")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    got = pretrain(Path(args.out), args.steps)
    print(f"base: {got['params']:,} params, held-out perplexity {got['held_perplexity']:.2f} after {args.steps} "
          f"steps ({got['seconds']:.1f} s); saved in {args.out}")


if __name__ == "__main__":
    main()
