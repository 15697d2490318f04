"""The Parsl internals fedgrid relies on (fedgrid.executors.parsl_api) are still there, in the shape
used: this fails on a Parsl upgrade that moved one, before a run would. It also holds the ``parsl``
pin in pyproject.toml to what was tested: a range with an upper bound that the installed Parsl is in."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import parsl
from packaging.requirements import Requirement
from packaging.version import Version
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider, SlurmProvider

from fedgrid.executors import parsl_api

REPO = Path(__file__).resolve().parents[2]


def test_the_pool_and_interchange_modules_are_where_the_launchers_run_them():
    for module in (parsl_api.POOL_MODULE, parsl_api.INTERCHANGE_MODULE):
        assert importlib.util.find_spec(module) is not None, module
    pool = importlib.util.find_spec(parsl_api.POOL_MODULE).origin
    # the pool module takes its workers' context by name at import, which pool_start replaces first
    context_module, name = parsl_api.POOL_CONTEXT
    assert re.search(rf"^from {re.escape(context_module)} import .*\b{name}\b", Path(pool).read_text(), re.M)
    assert hasattr(importlib.import_module(context_module), name)
    src = Path(pool).read_text()
    assert f"{name}.Process(" in src and f"{name}.Manager()" in src, "workers and the manager server come from it"
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    assert "process_worker_pool.py" in DEFAULT_LAUNCH_CMD  # executors/htex.py replaces that word


def test_the_files_run_without_this_package_name_the_same_modules():
    executors = REPO / "executors"
    assert f'POOL_MODULE = "{parsl_api.POOL_MODULE}"' in (executors / "pool_start.py").read_text()
    assert f'"{parsl_api.INTERCHANGE_MODULE}"' in (executors / "ic_guard.py").read_text()
    context_module, name = parsl_api.POOL_CONTEXT
    assert f"{context_module}.{name} = " in (executors / "pool_start.py").read_text()


def test_an_htex_has_the_block_calls_the_walltime_drain_uses(tmp_path):
    ex = HighThroughputExecutor(label="x", provider=LocalProvider(init_blocks=0), address="127.0.0.1")
    assert list(inspect.signature(ex._hold_block).parameters) == ["block_id"]
    assert isinstance(ex._status, dict)  # block id -> JobStatus, filled by the job status poller
    assert parsl_api.block_state(ex, "0") is None
    from parsl.jobs.states import JobState, JobStatus

    ex._status["0"] = JobStatus(JobState.SCALED_IN)
    assert parsl_api.block_state(ex, "0") == "SCALED_IN"
    assert callable(ex.connected_managers) and callable(ex.scale_out_facade)


def test_a_slurm_provider_without_accounting_polls_with_squeue_and_is_widened_once(monkeypatch):
    monkeypatch.setattr(SlurmProvider, "execute_wait", lambda self, cmd, timeout=None: (1, "", "no sacct"))
    p = SlurmProvider()
    assert p._cmd.startswith("squeue")
    parsl_api.squeue_all_states(p)
    parsl_api.squeue_all_states(p)
    assert p._cmd.startswith("squeue -t all ") and p._cmd.count("-t all") == 1


def test_address_discovery_is_replaced_where_the_htex_constructor_calls_it():
    with parsl_api.dry_run_discovery(lambda: {"10.9.8.7"}):
        ex = HighThroughputExecutor(label="y", provider=LocalProvider(init_blocks=0))
    assert "10.9.8.7" in ex.all_addresses


def test_the_parsl_pin_has_an_upper_bound_and_holds_the_installed_parsl():
    # (read as text: tomllib is not in Python 3.10's standard library)
    line = re.search(r'^\s*"(parsl[<>=!~].*?)",', (REPO / "pyproject.toml").read_text(), re.M)
    assert line is not None, "pyproject.toml names no parsl requirement"
    req = Requirement(line.group(1))
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), req
    assert Version(parsl.__version__) in req.specifier, (parsl.__version__, str(req))


def test_the_overlapped_start_gives_an_executor_what_add_executors_gives_it_before_its_start():
    from parsl.dataflow.dflow import DataFlowKernel

    src = inspect.getsource(DataFlowKernel.add_executors)
    before_start = src[:src.index("executor.start()")]
    assigned = set(re.findall(r"^\s*executor\.(\w+)\s*=", before_start, re.M))
    # what parsl_api.add_executors_at_once assigns, plus the monitoring ones it leaves to Parsl
    # (a DataFlowKernel with monitoring starts its executors as Parsl does)
    assert assigned <= {"run_id", "run_dir", "log_config", "monitoring_messages", "monitoring_receiver"}, assigned
    assert "provider.script_dir = os.path.join(self.run_dir, 'submit_scripts')" in before_start
    assert "self.job_status_poller.add_executors(" in src[src.index("executor.start()"):]
