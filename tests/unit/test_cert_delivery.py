"""How pods and EC2 instances get their pool's CurveZMQ keys (fedgrid.executors.certs): which files,
never the interchange's secret key, the shell that materializes them (run here, wrapped as each
provider wraps it), the pod's read-only Secret volume, and the executor hooks at start and shutdown.
(tests/integration/test_pod_command.py runs a pod's whole command as another user.)"""

from __future__ import annotations

import base64
import logging
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from fedgrid.executors import certs, kubernetes


@pytest.fixture
def cert_dir(tmp_path) -> Path:
    """A certificate folder as Parsl's HTEX makes it at start."""
    from parsl import curvezmq

    return Path(curvezmq.create_certificates(tmp_path / "driver"))


def server_secret(cert_dir: Path) -> bytes:
    import zmq.auth

    return zmq.auth.load_certificate(cert_dir / "server.key_secret")[1]


def test_a_pool_gets_the_client_pair_and_only_the_servers_public_key(cert_dir, tmp_path):
    import zmq
    import zmq.auth
    from parsl import curvezmq

    files = certs.pool_files(cert_dir)
    assert sorted(files) == sorted(certs.POOL_FILES) == ["client.key_secret", "server.key_secret"]
    assert files["client.key_secret"] == (cert_dir / "client.key_secret").read_bytes()
    assert all(server_secret(cert_dir) not in data for data in files.values())
    # what Parsl's pool does with them: a client socket keyed with the server's public key
    pool = tmp_path / "pool"
    pool.mkdir(mode=0o700)
    for name, data in files.items():
        (pool / name).write_bytes(data)
    public, placeholder = zmq.auth.load_certificate(pool / "server.key_secret")
    assert public == zmq.auth.load_certificate(cert_dir / "server.key")[0] and placeholder == certs.WITHHELD.encode()
    ctx = curvezmq.ClientContext(str(pool))
    try:
        ctx.socket(zmq.DEALER).close()
    finally:
        ctx.term()


def test_the_worker_command_names_no_file_of_the_driver():
    cmd = certs.pool_launch_cmd()
    assert "{cert_dir}" not in cmd and "{logconf}" not in cmd
    assert '--cert_dir "$fedgrid_certs" ' in cmd and "--logconf=None " in cmd
    assert "{{block_id}}" in cmd  # the rest is Parsl's, formatted by Parsl


def kubelet_mount(mount: Path, files: dict[str, bytes]) -> None:
    """A Secret volume's layout: ``..data/<key>`` files (mode 0444), a symlink per key, not 0700."""
    (mount / "..data").mkdir(parents=True)
    for name, data in files.items():
        (mount / "..data" / name).write_bytes(data)
        (mount / "..data" / name).chmod(0o444)
        (mount / name).symlink_to(Path("..data") / name)
    mount.chmod(0o1777)


def as_sent(kind: str, command: str) -> str:
    """``command`` wrapped as the kind's provider sends it: a pod's ``bash -c`` script, or the
    user script of an instance's user data (SingleNodeLauncher's, within Parsl's template)."""
    if kind == "kubernetes":
        from parsl.providers.kubernetes.template import template_string

        return template_string.format(command=command, worker_init="")
    from string import Template

    from parsl.launchers import SingleNodeLauncher
    from parsl.providers.aws.template import template_string

    script = SingleNodeLauncher()(command, 1, 1)
    user_data = Template(template_string).substitute(jobname="j", user_script=script, linger="true", worker_init="")
    assert script in user_data and command in user_data  # the template does not touch the command
    return script


@pytest.mark.parametrize("kind", ["kubernetes", "aws"])
def test_the_worker_command_materializes_owner_only_files_then_removes_them(kind, cert_dir, tmp_path):
    files = certs.pool_files(cert_dir)
    if kind == "kubernetes":
        kubelet_mount(tmp_path / "mount", files)
        prelude = certs.copy_from(str(tmp_path / "mount"))
    else:
        prelude = certs.InCommand().publish(files)
        assert server_secret(cert_dir).decode() not in prelude
    seen, tmp = tmp_path / "seen", tmp_path / "tmp"
    seen.mkdir(), tmp.mkdir()
    look = f'cp -p "$fedgrid_certs"/* {seen}/ && stat -c %a "$fedgrid_certs" > {seen}/mode'
    done = subprocess.run(["bash", "-c", as_sent(kind, f"{prelude} && {look}")], env={"TMPDIR": str(tmp),
                          "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (seen / "mode").read_text().strip() == "700"
    for name, data in files.items():
        assert (seen / name).read_bytes() == data and stat.S_IMODE((seen / name).stat().st_mode) == 0o600
    assert list(tmp.iterdir()) == []  # the private folder went with the command


@pytest.fixture
def api():
    """The Kubernetes API calls fedgrid and Parsl make, recorded (nothing here reaches a cluster)."""
    calls = SimpleNamespace(pods=[], secrets=[], replaced=[], deleted=[], fail=None)

    def create_namespaced_secret(namespace, body):
        if calls.fail:
            raise calls.fail
        calls.secrets.append((namespace, body))

    def delete_namespaced_secret(name, namespace):
        if calls.fail:
            raise calls.fail
        calls.deleted.append((namespace, name))

    calls.create_namespaced_secret = create_namespaced_secret
    calls.replace_namespaced_secret = lambda name, namespace, body: calls.replaced.append((namespace, name, body))
    calls.delete_namespaced_secret = delete_namespaced_secret
    calls.create_namespaced_pod = lambda namespace, body: calls.pods.append(body) or SimpleNamespace(status=None)
    return calls


def test_pods_mount_the_secret_read_only_beside_their_volumes(kubeconfig, api):
    spec = kubernetes.Spec(image="img", persistent_volumes=[{"claim": "data", "mount_path": "/data"}])
    p = kubernetes.provider(spec, dry_run=True)
    p.kube_client._api = api
    with pytest.raises(RuntimeError, match="no certificate Secret"):
        p.submit("true", 1)
    p.cert_secret = "fedgrid-certs-x-0123456789"
    p.submit("true", 1)
    (pod,) = api.pods
    vols = {v.name: v for v in pod.spec.volumes}
    assert vols["data"].persistent_volume_claim.claim_name == "data"
    secret = vols[kubernetes.CERT_VOLUME].secret
    assert (secret.secret_name, secret.default_mode) == ("fedgrid-certs-x-0123456789", 0o444)
    mounts = {m.name: m for m in pod.spec.containers[0].volume_mounts}
    assert (mounts[kubernetes.CERT_VOLUME].mount_path, mounts[kubernetes.CERT_VOLUME].read_only) == (
        "/var/run/fedgrid/certs", True)
    assert mounts["data"].mount_path == "/data"


def test_the_secret_holds_the_pool_files_is_replaced_if_there_and_deleted_at_shutdown(cert_dir, api, caplog):
    from kubernetes.client.exceptions import ApiException

    files = certs.pool_files(cert_dir)
    prov = SimpleNamespace(kube_client=api, namespace="fl", cert_mount="/certs", cert_secret=None)
    delivery = kubernetes.SecretDelivery(prov, "My_Site")
    assert delivery.publish(files) == certs.copy_from("/certs")
    ((ns, body),) = api.secrets
    assert ns == "fl" and body.metadata.name == prov.cert_secret
    assert prov.cert_secret.startswith("fedgrid-certs-my-site-")
    assert {k: base64.b64decode(v) for k, v in body.data.items()} == files
    api.fail = ApiException(status=409)  # the same keys' Secret exists: replaced
    delivery.publish(files)
    assert [(n, name) for n, name, _ in api.replaced] == [("fl", prov.cert_secret)]
    api.fail = None
    delivery.withdraw()
    assert api.deleted == [("fl", prov.cert_secret)]
    api.fail = ApiException(status=404)  # gone already: nothing to say
    delivery.withdraw()
    api.fail = ApiException(status=403)  # a failure is said, not raised: the run's results are kept
    with caplog.at_level(logging.WARNING):
        delivery.withdraw()
    assert prov.cert_secret in caplog.text


def test_start_hands_the_files_over_and_shutdown_withdraws_them_even_when_it_fails(cert_dir):
    class Executor:
        cert_dir = None
        launch_cmd = "pool --block_id={block_id}"  # as start leaves it: Parsl formats it per block

        def start(self):
            self.cert_dir = str(cert_dir)

        def shutdown(self):
            raise RuntimeError("interchange gone")

    class Delivery:
        published, withdrawn = None, False

        def publish(self, files):
            self.published = files
            return "echo {literal}"

        def withdraw(self):
            self.withdrawn = True

    ex, delivery = Executor(), Delivery()
    assert certs.attach(ex, delivery) is ex
    ex.start()
    assert delivery.published == certs.pool_files(cert_dir)
    assert ex.launch_cmd.format(block_id=3) == "echo {literal} && pool --block_id=3"
    with pytest.raises(RuntimeError, match="interchange gone"):
        ex.shutdown()
    assert delivery.withdrawn


def test_both_kinds_build_parsls_htex_with_the_remote_command(kubeconfig, monkeypatch, tmp_path):
    pytest.importorskip("boto3")
    from parsl.executors import HighThroughputExecutor

    from fedgrid.executors import aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    built = [kubernetes.build(SimpleNamespace(name="k8s", executor=kubernetes.Spec(image="img", address="10.0.0.1")),
                              tmp_path, dry_run=True),
             aws.build(SimpleNamespace(name="ec2", executor=aws.Spec(image_id="ami-1", address="10.0.0.1")),
                       tmp_path, dry_run=True)]
    for ex in built:
        assert type(ex) is HighThroughputExecutor and ex.launch_cmd == certs.pool_launch_cmd()
    assert built[0].provider.cert_secret is None  # a dry run publishes nothing


@pytest.mark.parametrize("bad", [{"cert_mount": "certs"},
                                 {"persistent_volumes": [{"claim": "d", "mount_path": "/var/run/fedgrid/certs/"}]},
                                 {"persistent_volumes": [{"claim": kubernetes.CERT_VOLUME, "mount_path": "/d"}]}])
def test_the_certificate_mount_must_be_absolute_and_its_own(bad):
    with pytest.raises(ValidationError):
        kubernetes.Spec(image="img", **bad)
