"""Federated LoRA fine-tuning (examples/lora): bytes per round, adapter against the full model,
federated perplexity and seconds per round.

    python bench/lora.py [--rounds 10] [--pretrain-steps 300]

Pre-trains the example's tiny GPT-2 base on the fortune files no client holds, then runs
examples/lora/job.yaml (30 clients, one fortune file each, two HTEX sites) in a temp dir. The
full-model figure is what FedAvg of the whole model would send: every client's copy of all its
parameters. Writes bench/results/lora.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO / "examples" / "lora", REPO / "examples" / "nextchar"):
    sys.path.insert(0, str(p))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "examples" / "lora"), str(REPO / "examples" / "nextchar"),
                                            os.environ.get("PYTHONPATH", "")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    args = ap.parse_args()
    from common import save_result
    from pretrain import pretrain

    import fedgrid

    work = Path(tempfile.mkdtemp(prefix="fedgrid-lora-"))
    base = pretrain(work / "base", steps=args.pretrain_steps)
    job = fedgrid.load_job(REPO / "examples" / "lora" / "job.yaml",
                           [f"checkpoint.dir={work / 'run'}", f"client.options.base={work / 'base'}",
                            f"rounds={args.rounds}"])
    rows = fedgrid.run(job, quiet=True).rows
    full = base["params"] * 4  # float32
    per_round = []
    for r in rows:
        per_round.append({"round": r["round"], "seconds": r["seconds"], "clients_ok": r["clients_ok"],
                          "bytes_up": r["bytes_up"], "full_model_bytes_up": full * r["clients_ok"],
                          "fed_perplexity": r.get("fed_perplexity"), "fed_loss": r.get("fed_loss")})
        ppl = r.get("fed_perplexity") or math.nan
        print(f"round {r['round']:2d}: {r['clients_ok']} clients, up {r['bytes_up'] / 1e3:.1f} kB (full model "
              f"{full * r['clients_ok'] / 1e6:.2f} MB), federated perplexity {ppl:.2f}, {r['seconds']:.1f} s")
    save_result("lora", {"base": base, "adapter_bytes": rows[-1]["bytes_up"] // max(rows[-1]["clients_ok"], 1),
                         "full_model_bytes": full, "rounds": per_round})


if __name__ == "__main__":
    main()
