"""Everything under tests/integration starts real executors (HTEX worker pools, the emulated Globus
Compute engine, thread sites of a real run) or runs fedgrid jobs in subprocesses: it is marked
`integration` (`pytest -m "not integration"` or `make test-fast` leaves it out). The fixtures
both kinds of test use (`write_job`, `make_job`) are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # (a conftest's hook sees every collected item, not only its folder's: pick this folder's)
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
