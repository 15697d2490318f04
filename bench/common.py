"""What the benchmark scripts share: where a result goes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save_result(name: str, out: Any) -> None:
    """Print a benchmark's result and write it to bench/results/<name>.json."""
    text = json.dumps(out, indent=1)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
