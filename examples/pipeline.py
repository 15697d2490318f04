"""A pipeline script: train, look at the run, continue it, export the model -- no CLI.

    python examples/pipeline.py [RUN_DIR]

It trains the quickstart job (digits over two htex sites) for 5 rounds, prints the status, adds 3
rounds from the newest checkpoint, writes the report (PNGs + summary.md) and exports the global
model as safetensors, then loads that file back into the architecture and checks its accuracy.
Parsl starts worker processes, so everything runs under the ``__main__`` guard.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fedgrid


def main(run_dir: str = "runs/pipeline") -> None:
    job = fedgrid.load_job(Path(__file__).with_name("quickstart.yaml"),
                           ["rounds=5", f"checkpoint.dir={run_dir}"])
    result = fedgrid.run(job, quiet=True)
    print(f"trained {result.rounds_done} rounds, test accuracy {result.last['test_accuracy']:.4f}")

    info = fedgrid.status(result.run_dir)  # what `fedgrid status --json` prints
    print(f"median {info['seconds_per_round']:.2f} s/round, failures {info['failures_by_reason'] or 'none'}")

    more = fedgrid.run(job, quiet=True, more=3)  # 3 rounds past the newest checkpoint (`--rounds +3`)
    print(f"continued to round {more.rounds_done}, test accuracy {more.last['test_accuracy']:.4f}")

    for path in fedgrid.report(result.run_dir):
        print(f"report: {path}")

    model_file = fedgrid.export(result.run_dir, fmt="safetensors")
    from safetensors.torch import load_file

    from fedgrid.apps import datasets
    from fedgrid.apps.evaluate import evaluate
    from fedgrid.apps.models import build, get_params

    model = build("cnn", (1, 8, 8), 10)
    model.load_state_dict(load_file(model_file))
    acc = evaluate(model, get_params(model), datasets.load_test(job.data.model_dump(), job.seed))["accuracy"]
    print(f"exported {model_file}; reloaded, it scores {acc:.4f} (the run recorded "
          f"{more.last['test_accuracy']:.4f})")


if __name__ == "__main__":
    main(*sys.argv[1:2])
