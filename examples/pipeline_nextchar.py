"""A pipeline script for a job with its own client code: the nextchar example end to end, no CLI.

    apt-get install fortunes
    python examples/pipeline_nextchar.py [RUN_DIR]

It trains examples/nextchar/job.yaml (a character LSTM, one client per fortune file, FedProx) for
6 rounds, prints each round's federated next-character accuracy (``fed_accuracy``, the clients'
own held-out text) and the status, adds 2 rounds from the newest checkpoint, writes the report,
exports the global model as safetensors, loads it back into the example's model class and lets it
write a few lines. The client package lives in examples/nextchar: it goes on ``sys.path`` here and
on ``PYTHONPATH`` for the worker processes Parsl starts, so everything runs under the ``__main__``
guard.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import fedgrid

EXAMPLE = Path(__file__).resolve().with_name("nextchar")


def importable(folder: Path) -> None:
    """`folder`'s packages importable here and in the site workers (they inherit the environment)."""
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)


def main(run_dir: str = "runs/pipeline-nextchar") -> None:
    importable(EXAMPLE)
    job = fedgrid.load_job(EXAMPLE / "job.yaml", ["rounds=6", f"checkpoint.dir={run_dir}"])
    result = fedgrid.run(job, quiet=True)
    for row in result.rows:
        print(f"round {row['round']:2d}: federated next-character accuracy {row['fed_accuracy']:.4f}, "
              f"loss {row['fed_loss']:.3f} ({row['fed_examples']} held-out characters)")

    info = fedgrid.status(result.run_dir)  # what `fedgrid status --json` prints
    fed = info["metrics"]["federated"]
    print(f"status: {info['rounds_done']} rounds, median {info['seconds_per_round']:.2f} s/round, "
          f"{fed['clients']} clients evaluated in round {fed['round']}, "
          f"failures {info['failures_by_reason'] or 'none'}")

    more = fedgrid.run(job, quiet=True, more=2)  # 2 rounds past the newest checkpoint (`--rounds +2`)
    print(f"continued to round {more.rounds_done}: fed_accuracy {more.last['fed_accuracy']:.4f}")

    for path in fedgrid.report(result.run_dir):
        print(f"report: {path}")

    model_file = fedgrid.export(result.run_dir, fmt="safetensors")
    import torch
    from nextchar import data
    from nextchar.client import build_model, options
    from safetensors.torch import load_file

    model = build_model(options(job.client.options), job.seed)
    model.load_state_dict(load_file(model_file))
    print(f"exported {model_file}; a sample from it:\n{write(model, 'The ', 160, data, torch)}")


def write(model, prompt: str, length: int, data, torch, temperature: float = 0.7) -> str:  # noqa: ANN001
    """`length` characters after `prompt`, sampled one at a time from the model's next-character
    distribution (seeded, so the sample is the same each time)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.from_numpy(data.encode(prompt)).unsqueeze(0)
    model.eval()
    with torch.no_grad():
        for _ in range(length):
            probs = torch.softmax(model(ids)[0, -1] / temperature, -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen).unsqueeze(0)], 1)
    chars = data.CHARS + "?"  # the unknown-character index last
    return "".join(chars[i] for i in ids[0].tolist())


if __name__ == "__main__":
    main(*sys.argv[1:2])
