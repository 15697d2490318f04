"""`client.python_path`: where the driver's check and every worker import the job's client class
from, and the warm-up that stops a run whose workers cannot import it (the one line it prints)."""

from __future__ import annotations

import io
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml

from fedgrid.apps.train import ClientCodeError, load_class
from fedgrid.flow.commands.api import with_python_path
from fedgrid.flow.config import ConfigError, load_job, parse_job
from fedgrid.flow.rounds.progress import RunProgress
from fedgrid.flow.rounds.runner import _await_warm_up

PACKAGE = "pathpkg"
CLIENT = '''from numpy_client import NumpyLogReg


class Mine(NumpyLogReg):
    """tests/clients' numpy client, from a package only client.python_path reaches."""
'''


@pytest.fixture
def code(tmp_path, monkeypatch) -> Path:
    """A client package in tmp_path/code, on no path yet; sys.path and the imported modules are as
    before once the test ends."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "code" / PACKAGE).mkdir(parents=True)
    (tmp_path / "code" / PACKAGE / "__init__.py").write_text("")
    (tmp_path / "code" / PACKAGE / "fl.py").write_text(CLIENT)
    yield (tmp_path / "code").resolve()
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def _raw(make_job, tmp_path: Path, **client) -> dict:
    return make_job(tmp_path / "run", client={"path": f"{PACKAGE}.fl:Mine", **client},
                    data={"dataset": "custom", "clients": 4, "partition": {"kind": "iid"}},
                    round={"min_clients": 2}, sites=[{"name": "a", "executor": {"kind": "htex"}, "clients": 4}])


def test_a_relative_python_path_is_the_job_files_folder_and_the_check_imports_from_it(tmp_path, code,
                                                                                       make_job) -> None:
    (tmp_path / "jobs").mkdir()
    with_path, without = tmp_path / "jobs" / "job.yaml", tmp_path / "jobs" / "plain.yaml"
    without.write_text(yaml.safe_dump(_raw(make_job, tmp_path)))
    with pytest.raises(ConfigError, match=rf"client\.path: cannot import module '{PACKAGE}\.fl'"):
        load_job(without)
    with_path.write_text(yaml.safe_dump(_raw(make_job, tmp_path, python_path=["../code"])))
    job = load_job(with_path)
    assert job.client.python_path == [str(code)]
    assert sys.path[0] == str(code) and sys.modules[f"{PACKAGE}.fl"].__file__.startswith(str(code))
    load_job(with_path)
    assert sys.path.count(str(code)) == 1  # checked again, not put on the path again


def test_an_absolute_python_path_is_kept_and_a_job_without_a_file_is_relative_to_here(tmp_path, code, make_job,
                                                                                      monkeypatch) -> None:
    assert parse_job(_raw(make_job, tmp_path, python_path=[str(code)])).client.python_path == [str(code)]
    monkeypatch.chdir(tmp_path)
    assert parse_job(_raw(make_job, tmp_path, python_path=["code"])).client.python_path == [str(code)]


def test_a_missing_python_path_directory_is_named(tmp_path, make_job) -> None:
    with pytest.raises(ConfigError, match=r"client\.python_path: no directory .*nowhere"):
        parse_job(_raw(make_job, tmp_path, python_path=[str(tmp_path / "nowhere")]))


def test_the_site_imports_the_class_from_python_path(code) -> None:
    """What a worker does with the task's code block (apps/train.load_class)."""
    cls = load_class(f"{PACKAGE}.fl:Mine", [str(code)])
    assert cls.__name__ == "Mine" and sys.path[0] == str(code)
    assert load_class(f"{PACKAGE}.fl:Mine", [str(code)]) is cls and sys.path.count(str(code)) == 1


def test_the_python_api_sets_python_path_relative_to_here(tmp_path, code, make_job, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = _raw(make_job, tmp_path)
    del raw["client"]
    with pytest.raises(ConfigError, match=r"client\.python_path: the job runs the built-in client"):
        with_python_path(parse_job({**raw, "data": {"dataset": "digits", "clients": 4}}), ["code"])
    sys.path.insert(0, str(code))  # the script imports its package; a job built here passes the check
    job = parse_job(_raw(make_job, tmp_path))
    assert with_python_path(job, None) is job
    assert with_python_path(job, ["code"]).client.python_path == [str(code)]


def _warm(*outcomes: tuple[str, BaseException | None]) -> list[tuple[str, Future]]:
    out = []
    for site, exc in outcomes:
        f: Future = Future()
        f.set_exception(exc) if exc is not None else f.set_result({"pid": 1})
        out.append((site, f))
    return out


def _missing(name: str = PACKAGE) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_a_site_that_cannot_import_the_client_stops_the_run_with_one_line(tmp_path, code, make_job) -> None:
    sys.path.insert(0, str(code))  # on the driver's path only, as a script's own package is
    job = parse_job(_raw(make_job, tmp_path))
    out = io.StringIO()
    with pytest.raises(ConfigError) as stop:
        _await_warm_up(_warm(("a", None), ("b", _missing())), 5, RunProgress(1, 0, stream=out), job.client)
    e = stop.value
    assert e.key == "client.python_path" and "\n" not in str(e)
    assert f"site b's workers cannot import {PACKAGE}.fl (ModuleNotFoundError: No module named '{PACKAGE}')" \
        in e.expected
    assert f"set client.python_path: [{code}]" in e.expected and "PYTHONPATH" in e.expected
    # the directories were given, and that site still cannot see them
    job = parse_job(_raw(make_job, tmp_path, python_path=[str(code)]))
    with pytest.raises(ConfigError, match=rf"though it imports here from client\.python_path \['{code}'\]"):
        _await_warm_up(_warm(("a", _missing(f"{PACKAGE}.fl"))), 5, RunProgress(1, 0, stream=out), job.client)


def test_only_the_client_modules_import_failing_stops_the_run(tmp_path, code, make_job) -> None:
    """The client's own code raising (a ClientCodeError, even about a missing module), another
    module missing, any other error: warnings, as before; round 1 records what happens."""
    sys.path.insert(0, str(code))
    job = parse_job(_raw(make_job, tmp_path))
    out = io.StringIO()
    own = ClientCodeError(f"ModuleNotFoundError: No module named '{PACKAGE}' [at fl.py:3 in warm]", "tb")
    _await_warm_up(_warm(("a", own), ("a", _missing("sklearn")), ("b", RuntimeError("no torch"))), 5,
                   RunProgress(1, 0, stream=out), job.client)
    assert out.getvalue().count("warning: warm-up failed on a worker") == 3
    _await_warm_up(_warm(("a", _missing())), 5, RunProgress(1, 0, stream=out), None)  # the built-in client


def test_an_import_failure_that_arrives_wrapped_is_still_found(tmp_path, code, make_job) -> None:
    sys.path.insert(0, str(code))
    job = parse_job(_raw(make_job, tmp_path))
    try:
        try:
            raise _missing()
        except ImportError as inner:
            raise RuntimeError("task failed") from inner
    except RuntimeError as e:
        wrapped = e
    with pytest.raises(ConfigError, match=r"site a's workers cannot import"):
        _await_warm_up(_warm(("a", wrapped)), 5, RunProgress(1, 0, stream=io.StringIO()), job.client)
    sdk = pytest.importorskip("globus_compute_sdk.errors")  # its endpoint sends the traceback's text
    remote = sdk.TaskExecutionFailed(f"Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module "
                                     f"named '{PACKAGE}'\n")
    with pytest.raises(ConfigError, match=r"site g's workers cannot import"):
        _await_warm_up(_warm(("g", remote)), 5, RunProgress(1, 0, stream=io.StringIO()), job.client)
