"""What a run directory yields, read from its files only: its status (:mod:`.status`), the report's
plots and summary (:mod:`.report`) and the exported model (:mod:`.export`).

Below the commands and beside the round loop: ``fedgrid status | report | export`` (flow/commands/)
are thin wrappers over these, and a finished run's trackers keep the report's plots and the
exported model (flow/rounds/runner.py), so the round loop never imports the commands layer
(tests/unit/test_layering.py). Nothing here imports flow/commands/.
"""
