"""A client package the driver can import and the workers cannot: `fedgrid run` stops before round
1 with one line, and runs once `client.python_path` hands the workers its directory."""

from __future__ import annotations

import sys

import pyarrow.parquet as pq

from fedgrid.flow.persist.table import rows_path

CLIENT = '''from numpy_client import NumpyLogReg


class Mine(NumpyLogReg):
    """tests/clients' numpy client (on the workers' PYTHONPATH), from a package that is not."""
'''


def test_a_client_only_the_driver_imports_stops_before_round_one_until_python_path_is_set(
        tmp_path, monkeypatch, write_job, cli) -> None:
    (tmp_path / "code" / "driveronly").mkdir(parents=True)
    (tmp_path / "code" / "driveronly" / "__init__.py").write_text("")
    (tmp_path / "code" / "driveronly" / "fl.py").write_text(CLIENT)
    # on the driver's sys.path only: the workers inherit PYTHONPATH (tests/clients), not this
    monkeypatch.setattr(sys, "path", [str(tmp_path / "code"), *sys.path])
    monkeypatch.chdir(tmp_path)
    common = dict(rounds=1, data={"dataset": "custom", "clients": 2, "partition": {"kind": "iid"}},
                  train={"epochs": 1, "batch_size": 32, "lr": 0.5}, round={"min_clients": 2, "deadline_s": 60},
                  sites=[{"name": "a", "executor": {"kind": "htex", "workers": 1}, "clients": 2}])
    try:
        job = write_job(client="driveronly.fl:Mine", **common)
        assert cli("check", job)[0] == 0  # the driver imports it
        rc, _, err = cli("run", job, "--quiet")
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"error: {job}: client.python_path: site a's workers cannot import driveronly.fl "
                              "(ModuleNotFoundError: No module named 'driveronly')"), err
        assert f"set client.python_path: [{(tmp_path / 'code').resolve()}]" in err
        assert not rows_path(tmp_path / "run").exists()  # no round was tried

        job = write_job(client={"path": "driveronly.fl:Mine", "python_path": ["code"]}, **common)
        assert cli("run", job, "--quiet")[0] == 0
        (row,) = pq.read_table(rows_path(tmp_path / "run")).to_pylist()
        assert row["clients_ok"] == 2 and not row["failures"]
    finally:
        for name in [m for m in sys.modules if m.partition(".")[0] == "driveronly"]:
            del sys.modules[name]
