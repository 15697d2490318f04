"""GPU placement without a GPU: which worker is pinned to which device (executors/gpus.py, the HTEX
kinds' executors), how a worker turns its environment into ``ctx.device`` (apps/devices.py), and
the job errors. The real pools are in tests/integration/test_devices_run.py; training on a GPU is
bench/gpu.py's, on a machine that has one."""

from __future__ import annotations

import contextlib
import logging
from types import SimpleNamespace

import pytest

from fedgrid.apps import devices, train
from fedgrid.apps.task import TrainTask, client_code
from fedgrid.executors import gpus, htex, kubernetes, site_workers, slurm
from fedgrid.executors.common import SpecError
from fedgrid.flow.config.errors import ConfigError
from fedgrid.flow.config.loading import parse_job


def site(spec, name: str = "gpu") -> SimpleNamespace:
    return SimpleNamespace(name=name, executor=spec)


# -- which worker gets which GPU ------------------------------------------------------------------

@pytest.mark.parametrize("ids, per_gpu, per_worker, want", [
    (["0", "1"], 1, 1, ["0", "1"]),
    (["0", "1"], 2, 1, ["0", "0", "1", "1"]),  # two clients on each GPU, workers in blocks
    (["0", "0", "1"], 1, 1, ["0", "0", "1"]),  # an id listed twice: shared by two workers
    (["0", "1", "2", "3"], 1, 2, ["0,1", "2,3"]),  # two GPUs to each worker
    (["GPU-5e3a", "3"], 1, 1, ["GPU-5e3a", "3"]),
    ([], 1, 1, []),
])
def test_pins_give_each_worker_its_gpus_in_worker_order(ids, per_gpu, per_worker, want):
    assert gpus.pins(ids, per_gpu, per_worker) == want


@pytest.mark.parametrize("ids, per_gpu, per_worker, field, why", [
    ([], 2, 1, "workers_per_gpu", "names none"),
    ([], 1, 2, "gpus_per_worker", "names none"),
    (["0", "1"], 2, 2, "gpus_per_worker", "not both"),
    (["0", "1", "2"], 1, 2, "gpus_per_worker", "do not split"),
    (["0", "0"], 1, 2, "gpus", "more than once"),
])
def test_pins_that_cannot_work_name_their_option(ids, per_gpu, per_worker, field, why):
    with pytest.raises(SpecError, match=why) as e:
        gpus.pins(ids, per_gpu, per_worker)
    assert e.value.field == field


def test_placement_reads_as_gpus_and_their_workers():
    assert gpus.placement(["0", "0", "1", "1"]) == "GPU 0: workers 0-1; GPU 1: workers 2-3"
    assert gpus.placement(["0", "1", "0"]) == "GPU 0: workers 0,2; GPU 1: worker 1"
    assert gpus.placement(["0,1", "2,3"]) == "GPUs 0,1: worker 0; GPUs 2,3: worker 1"
    assert gpus.spans([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


# -- the htex kind on a workstation ------------------------------------------------------------------

def test_htex_runs_one_worker_per_pin_unless_told():
    assert htex.Spec(gpus=2).workers == 2
    assert htex.Spec(gpus=[0, 1], workers_per_gpu=2).workers == 4
    assert htex.Spec(gpus=4, gpus_per_worker=2).workers == 2
    assert htex.Spec(gpus=[3]).gpu_pins() == ["3"]
    assert htex.Spec(workers=3).workers == 3 and htex.Spec(workers=3).gpu_pins() == []
    assert site_workers(htex.Spec(gpus=[0, 1], workers_per_gpu=3)) == 6  # what selection and pacing plan with


def test_htex_executor_pins_every_worker_and_starts_them_all(tmp_path, monkeypatch):
    monkeypatch.setattr(htex.os, "cpu_count", lambda: 2)  # fewer cores than GPU workers
    ex = htex.build(site(htex.Spec(gpus=[0, 1], workers_per_gpu=2)), tmp_path)
    assert ex.available_accelerators == ["0", "0", "1", "1"]
    assert ex.max_workers_per_node == 4 and ex.workers_per_node == 4  # Parsl's own count: min(workers, pins)
    # a pool starts floor(cores / cores_per_worker) workers at most: all four must start on two cores
    assert int(2 // ex.cores_per_worker) == 4
    assert ex.launch_cmd.startswith("export FEDGRID_GPUS='0 0 1 1' && ")
    assert "--available-accelerators {accelerators}" in ex.launch_cmd


def test_htex_without_gpus_builds_what_it_always_did(tmp_path):
    ex = htex.build(site(htex.Spec(workers=2)), tmp_path)
    assert ex.available_accelerators == [] and ex.cores_per_worker == 1.0
    assert ex.launch_cmd == htex.launch_cmd()


def test_htex_describe_shows_the_placement():
    line = htex.describe(site(htex.Spec(gpus=[0, 1], workers_per_gpu=2)))
    assert line.endswith("4 worker(s); GPU 0: workers 0-1; GPU 1: workers 2-3")
    assert "GPU" not in htex.describe(site(htex.Spec(workers=2)))


def job(executor: dict, **over) -> dict:
    return {"sites": [{"name": "lab", "executor": executor}], **over}


@pytest.mark.parametrize("executor, key, why", [
    ({"kind": "htex", "gpus": 2, "workers": 3}, "sites.0.executor.workers", "3 worker(s) for 2 GPU pin(s)"),
    ({"kind": "htex", "workers_per_gpu": 2}, "sites.0.executor.workers_per_gpu", "gpus names none"),
    ({"kind": "htex", "gpus": "0,1"}, "sites.0.executor.gpus", "expected a GPU count or a list of device ids"),
    ({"kind": "htex", "gpus": [0, -1]}, "sites.0.executor.gpus", "expected a GPU count"),
    ({"kind": "htex", "gpus": 3, "gpus_per_worker": 2}, "sites.0.executor.gpus_per_worker", "do not split"),
    ({"kind": "slurm", "gpus_per_node": 2, "workers_per_node": 3}, "sites.0.executor.workers_per_node",
     "3 worker(s) for 2 GPU pin(s)"),
    ({"kind": "slurm", "gpus_per_node": 4, "workers_per_gpu": 2, "cores_per_node": 4},
     "sites.0.executor.cores_per_worker", "start 4 of the 8 GPU workers; set cores_per_worker: 0.471"),
    ({"kind": "kubernetes", "image": "i", "gpus_per_worker": 2}, "sites.0.executor.gpus_per_worker",
     "gpus_per_node names none"),
])
def test_gpu_options_that_cannot_work_are_one_line_errors_naming_the_key(executor, key, why):
    with pytest.raises(ConfigError) as e:
        parse_job(job(executor), "j.yaml")
    assert e.value.key == key and why in e.value.expected and "\n" not in str(e.value)


def test_train_device_is_auto_or_cpu():
    assert parse_job(job({"kind": "htex"})).train.device == "auto"
    assert parse_job(job({"kind": "htex"}, train={"device": "cpu"})).train.device == "cpu"
    with pytest.raises(ConfigError, match="train.device"):
        parse_job(job({"kind": "htex"}, train={"device": "gpu"}))


# -- the remote HTEX kinds ------------------------------------------------------------------------

def test_slurm_gpu_workers_share_the_nodes_gpus_and_the_batch_script_says_so(tmp_path):
    from fedgrid.executors import hpc

    spec = slurm.Spec(partition="gpu", cores_per_node=16, gpus_per_node=2, workers_per_gpu=2, address="10.0.0.1")
    assert spec.workers() == 4
    ex = slurm.build(site(spec), tmp_path, dry_run=True)
    assert ex.available_accelerators == ["0", "0", "1", "1"] and ex.max_workers_per_node == 4
    assert ex.provider.gpus_per_node == 2  # what the scheduler is asked for is the node's GPUs, not the pins
    script = hpc.batch_script(ex, spec.workers())
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "export FEDGRID_GPUS='0 0 1 1' && process_worker_pool.py" in script
    assert "--max_workers_per_node=4" in script and "--available-accelerators 0 0 1 1" in script
    assert "4 worker(s)/node, 2 GPU(s)/node (GPU 0: workers 0-1; GPU 1: workers 2-3)" in slurm.describe(site(spec))


def test_remote_kinds_default_to_one_worker_per_pin():
    # cores unknown (a pod): one worker per GPU, not the one worker a CPU pod gets
    assert kubernetes.Spec(image="i", gpus_per_node=4).workers() == 4
    assert kubernetes.Spec(image="i").workers() == 1
    assert slurm.Spec(cores_per_node=32, gpus_per_node=4, gpus_per_worker=2).workers() == 2
    assert slurm.Spec(cores_per_node=32).workers() == 32  # CPU sites as before


def test_remote_cpu_site_keeps_parsls_launch_command(tmp_path):
    ex = slurm.build(site(slurm.Spec(cores_per_node=4, address="10.0.0.1")), tmp_path, dry_run=True)
    assert ex.available_accelerators == [] and "FEDGRID_GPUS" not in ex.launch_cmd


# -- the worker's device ----------------------------------------------------------------------------

def never(*_):
    raise AssertionError("torch was asked")


def parsl_pinned(pins: str, rank: int, nvidia_smi_gpus: int | None) -> dict[str, str]:
    """A worker's environment as Parsl's process_worker_pool sets it for accelerator ``pins[rank]``
    (parsl/executors/high_throughput/process_worker_pool.py, ``worker``): with nvidia-smi listing
    the node's GPUs, an integer name k becomes k // (workers // GPUs); ROCR and ZE get it as is."""
    names = pins.split()
    name = names[rank]
    visible = name
    if nvidia_smi_gpus is not None:
        with contextlib.suppress(ValueError, ZeroDivisionError):  # Parsl's own fallback: the name as is
            visible = str(int(name) // (len(names) // nvidia_smi_gpus))
    return {"PARSL_WORKER_RANK": str(rank), "CUDA_VISIBLE_DEVICES": visible, "ROCR_VISIBLE_DEVICES": name,
            devices.PINS_VAR: pins}


@pytest.mark.parametrize("pins, gpus_seen", [("0 0 1 1", 2), ("0 0 1 1", None), ("0 1", 2), ("0 0 0 0", 4),
                                              ("0,1 2,3", 4), ("1 1 1 1", 2)])
def test_each_worker_gets_its_own_pin_whatever_parsl_made_of_it(pins, gpus_seen):
    for rank, pin in enumerate(pins.split()):
        env = parsl_pinned(pins, rank, gpus_seen)
        assert devices.restore_pin(env) == pin and env["CUDA_VISIBLE_DEVICES"] == pin
        p = devices.decide("auto", env, lambda: 1, never)
        assert p == devices.Placement("cuda:0", f"GPU {pin} (pinned by the site's gpus); torch sees 1 CUDA device(s)",
                                      pinned=True)


def test_parsls_sharing_is_undone_where_it_would_misplace_workers():
    env = parsl_pinned("0 0 1 1", 2, 2)  # worker 2 of two GPUs shared two ways
    assert env["CUDA_VISIBLE_DEVICES"] == "0"  # Parsl's 1 // (4 // 2): the wrong GPU
    devices.restore_pin(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"


def test_a_worker_fedgrid_did_not_pin_is_left_as_parsl_set_it():
    env = {"PARSL_WORKER_RANK": "5", "CUDA_VISIBLE_DEVICES": "2"}  # a `parsl` site's own accelerators
    assert devices.restore_pin(env) is None and env["CUDA_VISIBLE_DEVICES"] == "2"
    assert devices.decide("auto", env, lambda: 1, never).reason.startswith("CUDA_VISIBLE_DEVICES=2;")


@pytest.mark.parametrize("setting, env, cuda, node, device, why", [
    ("cpu", {"CUDA_VISIBLE_DEVICES": "0"}, never, never, "cpu", "train.device is cpu"),
    ("auto", {"CUDA_VISIBLE_DEVICES": "0"}, lambda: 0, never, "cpu", "torch sees no CUDA device"),
    ("auto", {"CUDA_VISIBLE_DEVICES": "-1"}, never, never, "cpu", "no GPU visible"),
    ("auto", {"CUDA_VISIBLE_DEVICES": ""}, never, never, "cpu", "no GPU visible"),
    ("auto", {}, never, lambda: False, "cpu", "no GPU on this node"),
    ("auto", {}, lambda: 2, lambda: True, "cuda:0", "CUDA_VISIBLE_DEVICES unset; torch sees 2"),
])
def test_decide(setting, env, cuda, node, device, why):
    p = devices.decide(setting, env, cuda, node)
    assert p.device == device and why in p.reason


def test_no_torch_means_cpu():
    def no_torch() -> int:
        raise ImportError("torch")

    p = devices.decide("auto", {"CUDA_VISIBLE_DEVICES": "0"}, no_torch, never)
    assert (p.device, p.pinned) == ("cpu", True) and "torch is not installed" in p.reason


@pytest.fixture
def fresh_placement():
    devices.placement.cache_clear()
    yield
    devices.placement.cache_clear()


def task(**train) -> TrainTask:
    return TrainTask(client=1, site="lab", round=1, clients=4, seed=0, data={}, code=client_code("m:C"),
                     train={"threads": 1, **train})


def test_a_context_with_a_visible_gpu_but_no_cuda_torch_falls_back_to_cpu_with_a_reason(
        fresh_placement, monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv(devices.PINS_VAR, raising=False)
    monkeypatch.setattr(devices, "torch_cuda_devices", lambda: 0)  # a CPU-only torch build
    with caplog.at_level(logging.WARNING, logger="fedgrid.apps.devices"):
        ctx = train.context(task())
    assert ctx.device == "cpu"
    assert "CUDA_VISIBLE_DEVICES=0, but torch sees no CUDA device" in devices.placement("auto").reason
    assert "torch sees no CUDA device" in caplog.text  # the worker's log says why a GPU site trains on cpu


def test_a_context_on_a_pinned_gpu_worker(fresh_placement, monkeypatch):
    for k, v in parsl_pinned("0 0 1 1", 3, 2).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(devices, "torch_cuda_devices", lambda: 1)
    assert train.context(task()).device == "cuda:0"
    assert devices.os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert train.context(task(device="cpu")).device == "cpu"  # train.device: cpu, whatever the site has


def test_the_drivers_context_and_a_hand_made_one_are_on_the_cpu():
    from fedgrid.apps.client import Context

    assert Context(client=0, clients=1, site="s", seed=0, data={}, options={}).device == "cpu"
