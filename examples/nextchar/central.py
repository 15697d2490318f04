"""The central baseline: the same model trained on the union of the clients' training text.

    PYTHONPATH=examples/nextchar python examples/nextchar/central.py [--epochs 10] [--job examples/nextchar/job.yaml]

It reads the job file for the client options, the client count, the seed and the train block, and
gives each epoch what one round of the federated run trains on: every client's capped share of
windows (``chars_per_epoch`` from each client's text, ``train.epochs`` times), pooled and
shuffled, in batches of ``train.batch_size``. After each epoch it prints next-character loss and
accuracy on the union of the clients' held-out tails, which is what ``fed_accuracy`` weighs
(an example-weighted mean over clients is the accuracy on the pooled characters).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from nextchar import data
from nextchar.client import Tally, build_model, make_optimizer, options, score, step, windows


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default=str(Path(__file__).with_name("job.yaml")))
    ap.add_argument("--epochs", type=int, default=None, help="default: the job's rounds")
    ap.add_argument("--clients", type=int, default=None, help="default: the job's data.clients")
    a = ap.parse_args(argv)
    job = yaml.safe_load(Path(a.job).read_text())
    opts = options(job["client"].get("options", {}))
    clients = a.clients or job["data"]["clients"]
    train = {"epochs": 1, "lr": 0.05, "momentum": 0.0, "batch_size": 32, **job.get("train", {})}
    seed, epochs = int(job.get("seed", 0)), a.epochs or int(job.get("rounds", 10))
    torch.set_num_threads(1)

    texts = [data.client_text(c, clients, opts["root"], float(opts["holdout"])) for c in range(clients)]
    held = [h[:int(opts["eval_chars"]) + 1] for _, h in texts]
    model = build_model(opts, seed)
    opt = make_optimizer(model, train, opts)
    rng = np.random.default_rng([seed, 0xCE])
    print(f"{clients} clients, {sum(len(t) for t, _ in texts)} training characters, "
          f"{sum(len(h) - 1 for h in held)} held out; {epochs} epochs of {train['epochs']} x capped windows")
    out = []
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        tally = Tally()
        for _ in range(int(train["epochs"])):
            pool = torch.cat([windows(t, int(opts["seq_len"]), int(opts["chars_per_epoch"]), rng) for t, _ in texts])
            for batch in pool[torch.from_numpy(rng.permutation(len(pool)))].split(int(train["batch_size"])):
                step(model, opt, batch, float(opts["clip"]), tally)
        scores = [score(model, h) for h in held]
        chars = sum(s.chars for s in scores)
        row = {"epoch": epoch, "train_loss": tally.metrics()["loss"],
               "held_loss": sum(s.loss for s in scores) / chars,
               "held_accuracy": sum(s.correct for s in scores) / chars}
        out.append(row)
        print(f"epoch {epoch:3d}  train loss {row['train_loss']:.3f}  held-out loss {row['held_loss']:.3f}  "
              f"accuracy {row['held_accuracy']:.4f}  ({time.time() - t0:.1f} s)", flush=True)
    return out


if __name__ == "__main__":
    main()
