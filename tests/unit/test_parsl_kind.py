"""The `parsl` site kind: a user's factory checked and called as a site's executor, the capabilities
the rest of fedgrid reads from what it builds, and a job's sites on a Parsl workflow's own
DataFlowKernel (here of thread pools only: nothing starts a process). The factories are written as
a user would write them, in tests/clients/parsl_sites.py; runs on real pools are in
tests/integration/test_parsl_site.py and test_in_workflow.py."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import yaml

import fedgrid
from fedgrid.apps import guard
from fedgrid.executors import build_executor, pbs, site_workers, slurm
from fedgrid.executors import parsl as kind
from fedgrid.flow.commands.api import for_workflow
from fedgrid.flow.config import ConfigError, parse_job
from fedgrid.flow.rounds.sites import SiteRuntime, block_watch, warm_slots


@pytest.fixture
def no_outside(monkeypatch, no_network):
    """Checking a factory reaches no network and runs no scheduler command (sacct, squeue, qsub)."""
    import parsl.providers.cluster_provider as cp

    def refuse(*args, **kwargs):
        raise AssertionError(f"checking a factory ran a scheduler command: {args}")

    monkeypatch.setattr(cp, "execute_wait", refuse)


@pytest.fixture
def job(make_job, tmp_path):
    """A job whose one site has the given executor block (or several sites: name -> block)."""
    def make(executor: dict | None = None, **sites: dict) -> dict:
        blocks = sites or {"a": executor}
        return make_job(tmp_path / "run", sites=[{"name": n, "executor": e, "clients": 6 // len(blocks)}
                                                 for n, e in blocks.items()])
    return make


def factory(name: str) -> dict:
    return {"kind": "parsl", "factory": f"parsl_sites:{name}"}


@pytest.fixture
def workflow(tmp_path, monkeypatch):
    """A workflow's DataFlowKernel with one executor of its own, cleaned up by the test, as a
    workflow would; the driver's process-wide flag a run sets is put back after."""
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel
    from parsl.executors import ThreadPoolExecutor

    monkeypatch.setattr(guard, "IN_DRIVER", guard.IN_DRIVER)
    dfk = DataFlowKernel(Config(executors=[ThreadPoolExecutor(label="prep", max_threads=2)], usage_tracking=0,
                                run_dir=str(tmp_path / "runinfo")))
    yield dfk
    dfk.cleanup()


# -- the factory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, says", [
    ("no_such_module:executor", "cannot import module 'no_such_module': ModuleNotFoundError"),
    ("parsl_sites:missing", "module 'parsl_sites' has no 'missing'"),
    ("parsl_sites:NOT_A_FUNCTION", r"parsl_sites:NOT_A_FUNCTION is not callable \(int\)"),
    ("parsl_sites:raises", r"parsl_sites:raises\('a'\) raised RuntimeError: no allocation for a"),
    ("parsl_sites:config", r"returned Config, expected a Parsl executor .*\(config.executors\[0\]\)"),
    ("parsl_sites:nothing", "returned NoneType, expected a Parsl executor"),
    ("parsl_sites:two_args", r"needs 2 argument\(s\); expected a function of the site's name"),
])
def test_a_factory_that_gives_no_executor_is_one_line_naming_its_key(job, path, says):
    with pytest.raises(ConfigError, match=says) as e:
        parse_job(job({"kind": "parsl", "factory": path}), "site.yaml")
    assert (e.value.file, e.value.key) == ("site.yaml", "sites.0.executor.factory")
    assert "\n" not in str(e.value)


def test_a_factory_must_make_a_new_executor_each_call(job):
    parse_job(job(factory("shared")))  # its first call is fine ...
    with pytest.raises(ConfigError, match="returned an executor it had returned before") as e:
        parse_job(job(factory("shared")))  # ... but an executor starts only once
    assert e.value.key == "sites.0.executor.factory"


@pytest.mark.parametrize("block", [{"kind": "parsl"}, {"kind": "parsl", "factory": "m:f", "label": "x"},
                                   {"kind": "parsl", "factory": "not a path"}])
def test_the_block_names_exactly_one_factory_or_label(job, block):
    with pytest.raises(ConfigError) as e:
        parse_job(job(block))
    assert e.value.key.startswith("sites.0.executor")


def test_the_factory_is_imported_from_client_python_path(job, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_site.py").write_text(
        "from parsl.executors import ThreadPoolExecutor\n\ndef pool():\n    return ThreadPoolExecutor(max_threads=2)\n")
    raw = job({"kind": "parsl", "factory": "my_site:pool"})
    raw["client"] = {"path": "sgd_client:SGDClient", "python_path": [str(tmp_path / "mine")]}
    assert parse_job(raw).sites[0].executor.workers() == 2


def test_the_executor_is_labelled_with_the_site_and_a_fixed_local_pool_keeps_its_block(job, tmp_path):
    site = parse_job(job(factory("htex"))).sites[0]
    assert site.executor.known.label == "a"  # its own label was "a-pool"
    ex = build_executor(site, tmp_path)  # what a run starts: a new executor, not the checked one
    assert ex is not build_executor(site, tmp_path, dry_run=True)
    assert ex.label == "a"
    assert ex.provider.min_blocks == ex.provider.init_blocks == 1  # never scaled in as idle


# -- capabilities ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, here, in_driver, scales, watched, per_node, warm, workers, scheduler", [
    ("threads", True, True, False, False, 3, 3, 3, None),  # no arguments: called without the site's name
    ("htex", True, False, False, True, 1, 1, 1, None),
    ("on_demand", True, False, True, False, 2, 0, 2, None),  # an optional parameter: not given the name
    ("slurm", False, False, True, False, 4, 0, 4 * 2 * 3, slurm),
    ("pbs", False, False, True, False, 1, 0, 1, pbs),
])
def test_capabilities_are_read_from_the_executor(job, no_outside, tmp_path, name, here, in_driver, scales, watched,
                                                 per_node, warm, workers, scheduler):
    j = parse_job(job(factory(name)))
    site, spec = j.sites[0], j.sites[0].executor
    assert (spec.runs_here(), spec.in_driver, spec.scales, spec.watch_workers) == (here, in_driver, scales, watched)
    assert (spec.workers(), warm_slots(site), site_workers(spec)) == (per_node, warm, workers)
    assert (spec.payload_limit, spec.payload_overhead) == (None, 1.0)
    watch = block_watch(site, build_executor(site, tmp_path, dry_run=True), j)
    if scheduler is None:
        assert watch is None
    else:  # the batch kind's own query watches the user's provider's jobs
        assert (watch.scheduler, watch.query, watch.poll_s) == (scheduler.SCHEDULER, scheduler.query, 5.0)


def test_the_batch_kinds_keep_their_watch(job, no_outside, tmp_path):
    j = parse_job(job(s={"kind": "slurm"}, h={"kind": "htex"}))
    watches = {s.name: block_watch(s, build_executor(s, tmp_path, dry_run=True), j) for s in j.sites}
    assert watches["s"].query is slurm.query and watches["h"] is None


def test_check_prints_what_the_factory_built_and_its_batch_script(job, no_outside, cli, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(factory("slurm"))))
    rc, out, err = cli("check", path)
    assert rc == 0, err
    line = next(x for x in out.splitlines() if x.startswith("  a: "))
    assert line.startswith("  a: parsl -> HighThroughputExecutor + SlurmProvider; Parsl HighThroughputExecutor from "
                           "parsl_sites:slurm: label a, SlurmProvider, SrunLauncher, 2 node(s)/block")
    assert "4 worker(s)/node" in line and "batch jobs watched with the slurm kind's query" in line
    assert "#SBATCH --partition=gpu" in out and "source ~/venv/bin/activate" in out


# -- a workflow's DataFlowKernel --------------------------------------------------------------------------


def test_a_label_site_is_read_from_the_workflow_it_is_submitted_into(job, workflow, cli, tmp_path):
    raw = job({"kind": "parsl", "label": "prep"})
    alone = parse_job(raw).sites[0]
    assert alone.executor.known is kind.UNKNOWN  # no workflow yet: read as cautiously as a batch site
    assert "read when the job is submitted into its workflow" in kind.describe(alone)
    with pytest.raises(ConfigError, match=r"executor 'prep' is a Parsl workflow's: .*fedgrid.submit") as e:
        SiteRuntime(parse_job(raw), tmp_path / "run")  # `fedgrid run` has no workflow
    assert e.value.key == "sites.0.executor.label"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    rc, out, err = cli("check", path)
    assert rc == 0, err  # checked as far as it can be without the workflow, and said so
    assert "warning: site 'a' (parsl): a run from this machine would fail: SpecError: label: executor " \
           "'prep' is a Parsl workflow's" in out

    spec = for_workflow(raw, None, workflow).sites[0].executor
    assert (spec.in_driver, spec.workers(), spec.scales) == (True, 2, False)
    with pytest.raises(ConfigError, match="has no executor labelled 'nope'; its executors: prep") as e:
        for_workflow(job({"kind": "parsl", "label": "nope"}), None, workflow)
    assert e.value.key == "sites.0.executor.label"


def test_a_run_in_a_workflow_adds_only_what_is_missing_and_shuts_nothing_down(job, workflow, tmp_path):
    raw = job(a={"kind": "parsl", "label": "prep"}, b={"kind": "local", "workers": 1})
    first = SiteRuntime(for_workflow(raw, None, workflow), tmp_path / "run", workflow)
    assert first.by_site["a"] is workflow.executors["prep"]
    added = workflow.executors["b"]
    assert first.by_site["b"] is added and first._train["b"].executors == ["b"]
    first.close()
    assert not workflow.cleanup_called and not (tmp_path / "run" / "processes.json").exists()

    again = SiteRuntime(for_workflow(raw, None, workflow), tmp_path / "run", workflow)  # found, not added twice
    assert again.by_site["b"] is added
    again.close()
    other = job(a={"kind": "parsl", "label": "prep"}, b={"kind": "local", "workers": 2})
    with pytest.raises(ConfigError, match="already has an executor labelled 'b'") as e:
        SiteRuntime(for_workflow(other, None, workflow), tmp_path / "run", workflow)
    assert e.value.key == "sites.1.name"
    from parsl.app.app import python_app

    assert python_app(lambda x: 2 * x, executors=["b"], data_flow_kernel=workflow)(21).result(timeout=30) == 42


def test_a_submitted_run_waits_for_its_dependencies_and_never_starts_after_a_failed_one(job, tmp_path):
    failed: Future = Future()
    failed.set_exception(ValueError("preprocessing failed"))
    done: Future = Future()
    done.set_result("ok")
    run = fedgrid.submit(job({"kind": "local"}), after=[done, failed], quiet=True)
    with pytest.raises(fedgrid.DependencyFailed, match=r"1 future\(s\) the run waited for failed.*ValueError") as e:
        run.result(timeout=30)
    assert isinstance(e.value.__cause__, ValueError) and e.value.failed == [failed]

    pending: Future = Future()
    run = fedgrid.submit(job({"kind": "local"}), after=[pending], quiet=True)
    assert not run.done()  # waiting on `pending` (nothing else can finish it)
    pending.cancel()
    with pytest.raises(fedgrid.DependencyFailed, match="cancelled"):
        run.result(timeout=30)
    assert not (tmp_path / "run").exists()  # neither run started


def test_a_submitted_job_is_checked_when_it_starts_and_its_error_is_the_futures(job):
    run = fedgrid.submit({**job({"kind": "local"}), "rounds": -1}, quiet=True)
    with pytest.raises(ConfigError, match="rounds"):
        run.result(timeout=30)
