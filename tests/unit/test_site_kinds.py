"""The remote site kinds (slurm, pbs, kubernetes, aws) build the real Parsl objects their YAML asks for.

Builds here are dry runs under a no-network guard: `fedgrid check` must never reach a scheduler, a
cluster or a cloud, and several Parsl constructors would (HTEX address discovery, SlurmProvider's
``sacct``, the kubeconfig exec plugin, AWSProvider's VPC).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pydantic import ValidationError

from fedgrid.executors import aws, hpc, kubernetes, pbs, slurm
from fedgrid.executors.common import MissingExtra


def site(spec, name: str = "hpc") -> SimpleNamespace:
    return SimpleNamespace(name=name, executor=spec)


@pytest.fixture
def no_commands(monkeypatch):
    """Any scheduler command (sacct, squeue, qsub...) fails the test."""
    import parsl.providers.cluster_provider as cp

    def refuse(cmd, timeout):
        raise AssertionError(f"dry run ran {cmd!r}")

    monkeypatch.setattr(cp, "execute_wait", refuse)


SLURM = dict(partition="debug", account="abc", qos="normal", constraint="a100", walltime="02:30:00",
             nodes_per_block=2, cores_per_node=32, mem_per_node=200, gpus_per_node=4,
             scheduler_options="#SBATCH --mail-type=END", worker_init="module load conda; conda activate fl",
             launcher_options="--cpu-bind=none", init_blocks=1, max_blocks=4, workers_per_node=4)


def test_slurm_builds_htex_on_slurm_provider(no_network, no_commands, tmp_path):
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SrunLauncher
    from parsl.providers import SlurmProvider

    ex = slurm.build(site(slurm.Spec(**SLURM)), tmp_path, dry_run=True)
    assert isinstance(ex, HighThroughputExecutor) and ex.label == "hpc"
    assert ex.max_workers_per_node == 4 and ex.available_accelerators == ["0", "1", "2", "3"]
    assert ex.address is None and ex.heartbeat_threshold == 20
    assert ex.encrypted  # pinned by fedgrid, whatever Parsl's default becomes
    p = ex.provider
    assert isinstance(p, SlurmProvider)
    assert (p.partition, p.account, p.qos, p.constraint, p.walltime) == ("debug", "abc", "normal", "a100", "02:30:00")
    assert (p.nodes_per_block, p.init_blocks, p.min_blocks, p.max_blocks) == (2, 1, 0, 4)
    assert (p.cores_per_node, p.mem_per_node, p.gpus_per_node, p.exclusive) == (32, 200, 4, True)
    for line in ("#SBATCH --mail-type=END", "#SBATCH --partition=debug", "#SBATCH --gpus-per-node=4"):
        assert line in p.scheduler_options
    assert p.worker_init.strip() == "module load conda; conda activate fl"
    assert isinstance(p.launcher, SrunLauncher) and p.launcher.overrides == "--cpu-bind=none"


def test_slurm_real_build_asks_sacct_but_dry_run_does_not(monkeypatch):
    import parsl.providers.cluster_provider as cp

    ran = []
    monkeypatch.setattr(cp, "execute_wait", lambda cmd, timeout: ran.append(cmd) or (0, "", ""))
    spec = slurm.Spec(partition="debug")
    assert slurm.provider(spec)._cmd.startswith("sacct") and ran == ["sacct -X"]
    ran.clear()
    slurm.provider(spec, dry_run=True)
    assert ran == []


def test_workers_per_node_defaults():
    assert slurm.Spec().workers() == 1
    assert slurm.Spec(cores_per_node=32, cores_per_worker=8).workers() == 4
    assert pbs.Spec(cpus_per_node=64).workers() == 64
    assert pbs.Spec(cpus_per_node=64, workers_per_node=2).workers() == 2


def test_pbs_builds_htex_on_pbspro_provider(no_network, no_commands, tmp_path):
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import MpiExecLauncher
    from parsl.providers import PBSProProvider

    spec = pbs.Spec(queue="debug", account="proj", cpus_per_node=64, gpus_per_node=4, select_options="system=polaris",
                    scheduler_options="#PBS -l filesystems=home", worker_init="source ~/fl/bin/activate",
                    walltime="00:30:00", max_blocks=2, workers_per_node=4, address="10.1.2.3")
    ex = pbs.build(site(spec, "polaris"), tmp_path, dry_run=True)
    assert isinstance(ex, HighThroughputExecutor) and ex.label == "polaris"
    assert ex.all_addresses == {"10.1.2.3"} and ex.max_workers_per_node == 4 and len(ex.available_accelerators) == 4
    p = ex.provider
    assert isinstance(p, PBSProProvider) and isinstance(p.launcher, MpiExecLauncher)
    assert (p.queue, p.account, p.cpus_per_node, p.walltime) == ("debug", "proj", 64, "00:30:00")
    assert p.select_options == "system=polaris:ngpus=4"
    assert "#PBS -l filesystems=home" in p.scheduler_options and "source ~/fl/bin/activate" in p.worker_init
    assert (p.init_blocks, p.min_blocks, p.max_blocks) == (0, 0, 2)
    assert pbs.Spec(gpus_per_node=2, select_options="ngpus=2").select() == "ngpus=2"


@pytest.mark.parametrize("name, cls", sorted(hpc.LAUNCHERS.items()))
def test_launcher_names(name, cls):
    launcher = hpc.make_launcher(name, "-x" if name in hpc.TAKES_OVERRIDES else "")
    assert type(launcher).__name__ == cls
    if name in hpc.TAKES_OVERRIDES:
        assert launcher.overrides == "-x"


@pytest.mark.parametrize("bad", [
    {"partiton": "debug"},  # misspelled option
    {"walltime": "1:00"}, {"walltime": "01:60:00"}, {"walltime": "1h"},
    {"min_blocks": 3, "max_blocks": 2}, {"init_blocks": 2},
    {"launcher": "srunn"}, {"launcher": "single", "launcher_options": "-n 4"},
    {"nodes_per_block": 0}, {"cores_per_worker": 0},
])
def test_slurm_rejects_bad_options(bad):
    with pytest.raises(ValidationError):
        slurm.Spec.model_validate({"kind": "slurm", **bad})


def test_other_kinds_reject_unknown_and_bad_options():
    for spec, bad in [(pbs.Spec, {"partition": "x"}), (kubernetes.Spec, {"image": "i", "walltime": "01:00:00"}),
                      (kubernetes.Spec, {"namespace": "x"}), (kubernetes.Spec, {"image": "i", "memory_limit": "4GB"}),
                      (kubernetes.Spec, {"image": "i", "cpu_request": 4, "cpu_limit": 2}),
                      (aws.Spec, {"image_id": "ami-1", "nodes_per_block": 2}), (aws.Spec, {"instance_type": "t3"})]:
        with pytest.raises(ValidationError):
            spec.model_validate(bad)


def test_provider_config_is_endpoint_yaml():
    cfg = slurm.provider_config(slurm.Spec(**SLURM))
    assert cfg["type"] == "SlurmProvider" and cfg["partition"] == "debug" and cfg["walltime"] == "02:30:00"
    assert cfg["launcher"] == {"type": "SrunLauncher", "overrides": "--cpu-bind=none"}
    cfg = pbs.provider_config(pbs.Spec(queue="q", gpus_per_node=1))
    assert cfg["type"] == "PBSProProvider" and cfg["launcher"] == {"type": "MpiExecLauncher"}
    assert cfg["select_options"] == "ngpus=1"
    volumes = [{"claim": "c", "mount_path": "/d"}]
    k8s = kubernetes.provider_config(kubernetes.Spec(image="img", persistent_volumes=volumes))
    assert k8s["type"] == "KubernetesProvider" and k8s["persistent_volumes"] == [["c", "/d"]] and "launcher" not in k8s
    ec2 = aws.provider_config(aws.Spec(image_id="ami-1"))
    assert ec2["type"] == "AWSProvider" and "key_name" in ec2  # AWSProvider requires key_name, even null
    for c in (cfg, k8s, ec2):
        assert yaml.safe_load(yaml.safe_dump(c)) == c


def test_describe_lines():
    line = slurm.describe(site(slurm.Spec(**SLURM)))
    assert line.startswith("Parsl HTEX on Slurm: partition=debug account=abc")
    assert "2 node(s)/block" in line and "blocks 0..4" in line and "walltime 02:30:00" in line and "srun" in line
    assert "queue=q" in pbs.describe(site(pbs.Spec(queue="q")))
    assert "namespace=default image=img" in kubernetes.describe(site(kubernetes.Spec(image="img")))
    line = aws.describe(site(aws.Spec(image_id="ami-1", max_blocks=3), "cloud"))
    assert "region=us-east-2" in line and "up to 3 on-demand instance(s)" in line and "creates a VPC" in line


def test_spec_modules_import_no_provider_packages():
    code = ("import sys, fedgrid.executors.slurm, fedgrid.executors.pbs, fedgrid.executors.kubernetes, "
            "fedgrid.executors.aws; print([m for m in ('parsl', 'kubernetes', 'boto3') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- kubernetes -------------------------------------------------------------------------------


@pytest.mark.parametrize("module, package, spec, extra", [
    ("kubernetes", "kubernetes", {"image": "img"}, "kubernetes"),
    ("aws", "boto3", {"image_id": "ami-1"}, "aws"),
])
def test_missing_package_names_extra(monkeypatch, tmp_path, module, package, spec, extra):
    kind = {"kubernetes": kubernetes, "aws": aws}[module]
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(MissingExtra, match=rf"fedgrid\[{extra}\]") as e:
        kind.build(site(kind.Spec(**spec)), tmp_path, dry_run=True)
    assert e.value.extra == extra


@pytest.fixture
def kubeconfig(monkeypatch, tmp_path):
    """A kubeconfig whose user authenticates with an exec plugin that leaves a marker file when run."""
    kube_config = pytest.importorskip("kubernetes.config.kube_config")
    marker = tmp_path / "plugin-ran"
    cred = json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                       "status": {"token": "t"}})
    exec_ = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "sh",
             "args": ["-c", f"touch {marker}; echo '{cred}'"], "interactiveMode": "Never"}
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": {"server": "https://k8s.invalid:6443"}}],
           "users": [{"name": "u", "user": {"exec": exec_}}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    return marker


def test_kubernetes_dry_run_builds_real_provider_without_auth(kubeconfig, no_network, tmp_path):
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import KubernetesProvider

    spec = kubernetes.Spec(image="ghcr.io/lab/fedgrid:1", namespace="fl", cpu_request=2, cpu_limit=4,
                           memory_request="4Gi", memory_limit="8Gi", gpus_per_node=1, max_blocks=3,
                           persistent_volumes=[{"claim": "data", "mount_path": "/data"}], secret="regcred",
                           service_account_name="fl-sa", worker_init="export X=1", address="10.0.0.5")
    ex = kubernetes.build(site(spec, "k8s"), tmp_path, dry_run=True)
    assert isinstance(ex, HighThroughputExecutor) and ex.label == "k8s" and ex.available_accelerators == ["0"]
    p = ex.provider
    assert isinstance(p, KubernetesProvider)
    assert (p.image, p.namespace, p.init_cpu, p.max_cpu, p.init_mem, p.max_mem) == (
        "ghcr.io/lab/fedgrid:1", "fl", 2.0, 4.0, "4Gi", "8Gi")
    assert p.extra_limits == p.extra_requests == {"nvidia.com/gpu": "1"}
    assert p.persistent_volumes == [("data", "/data")] and p.secret == "regcred" and p.service_account_name == "fl-sa"
    assert (p.worker_init, p.init_blocks, p.max_blocks) == ("export X=1", 0, 3)
    assert not kubeconfig.exists()  # the exec plugin was not run


def test_kubernetes_real_provider_runs_the_exec_plugin(kubeconfig):
    """Why dry_run avoids load_kube_config: it runs the user's auth plugin (which may go online)."""
    kubernetes.provider(kubernetes.Spec(image="img"), dry_run=False)
    assert kubeconfig.exists()


def test_kubernetes_dry_run_without_any_cluster_config_fails_like_a_run(monkeypatch, tmp_path, no_network):
    kube_config = pytest.importorskip("kubernetes.config.kube_config")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kube_config.ConfigException, match="in-cluster"):
        kubernetes.build(site(kubernetes.Spec(image="img")), tmp_path, dry_run=True)


# --- aws --------------------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def test_aws_dry_run_builds_provider_that_creates_nothing(aws_env, no_network, tmp_path):
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import AWSProvider

    spec = aws.Spec(image_id="ami-0abc", instance_type="g5.xlarge", region="eu-west-1", key_name="me",
                    spot_max_bid=0.5, gpus_per_node=1, max_blocks=2, worker_init="pip install fedgrid",
                    address="203.0.113.7")
    ex = aws.build(site(spec, "cloud"), tmp_path, dry_run=True)
    assert isinstance(ex, HighThroughputExecutor) and ex.label == "cloud" and ex.available_accelerators == ["0"]
    p = ex.provider
    assert isinstance(p, AWSProvider) and type(p).__name__ == "DryRunAWSProvider"
    assert (p.image_id, p.instance_type, p.region, p.key_name, p.spot_max_bid) == (
        "ami-0abc", "g5.xlarge", "eu-west-1", "me", 0.5)
    assert (p.worker_init, p.max_blocks, p.state_file) == ("pip install fedgrid", 2, str(tmp_path / "aws-cloud.json"))
    assert p.would_create_vpc and p.client is None and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="dry-run"):
        p.submit("cmd", 1)


def test_aws_dry_run_reads_existing_state(aws_env, no_network, tmp_path):
    state = tmp_path / "shared.json"
    state.write_text(json.dumps({"vpcID": "vpc-1", "sgID": "sg-1", "snIDs": ["sn-1"], "instances": []}))
    p = aws.provider(aws.Spec(image_id="ami-1", state_file=str(state)), dry_run=True)
    assert not p.would_create_vpc and p.vpc_id == "vpc-1"


def test_aws_dry_run_still_requires_credentials(aws_env, monkeypatch, tmp_path: Path):
    from parsl.errors import ConfigurationError

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(ConfigurationError, match="profile"):
        aws.build(site(aws.Spec(image_id="ami-1")), tmp_path, dry_run=True)


def test_the_local_htex_kind_pins_encryption(tmp_path):
    from fedgrid.executors import htex

    ex = htex.build(site(htex.Spec(kind="htex")), tmp_path)
    assert ex.encrypted
