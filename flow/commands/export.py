"""`fedgrid export RUN_DIR [--round N] [--client N] --format safetensors|torch|peft`: the global (or
one client's personalized) model, for use outside fedgrid.

The files it writes, and the code that writes them, are flow/results/export.py: a finished run's
trackers keep the exported model too (flow/rounds/runner.py), and flow/rounds/ must not import the
commands. This module is the command's name for it.
"""

from __future__ import annotations

from fedgrid.flow.results.export import (
    FORMATS,
    client_block,
    client_model,
    describe,
    export_model,
    load_round,
    round_row,
    row_metrics,
    store_areas,
)

__all__ = ["FORMATS", "client_block", "client_model", "describe", "export_model", "load_round", "round_row",
           "row_metrics", "store_areas"]
