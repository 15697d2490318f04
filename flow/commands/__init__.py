"""What users call: the `fedgrid` CLI, the Python API behind ``fedgrid.run`` and friends, and the
commands that read a run (status, report, export), plan one (check) or repeat it (schedule)."""
