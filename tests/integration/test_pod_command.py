"""The command a `kubernetes` site's pod runs, run for real: as another user (`nobody`), in a scratch
folder, with no way into the driver's run directory (0700, root's), its pool gets the CurveZMQ keys
from the site's Secret, laid out as the kubelet mounts it, and trains the run's round.

Only what cannot run offline is faked: the Kubernetes API, which records the Secret and the pod
fedgrid sends and answers that the pod runs. The pod's container command is then run here as
written. Acting as `nobody` needs root (CI runs as root); elsewhere the test is skipped.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"),
                                reason="acting as nobody needs root and util-linux's setpriv (CI has both)")

NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
WAIT_S = 120  # hang guards only: a healthy run is done in seconds


class FakeCoreV1:
    """The Kubernetes API calls fedgrid and Parsl make for a site, answered offline: pods and
    Secrets are recorded, and every pod reads as Running."""

    def __init__(self):
        self.pods: queue.Queue = queue.Queue()
        self.secrets: dict[str, object] = {}
        self.deleted_secrets: list[str] = []

    def create_namespaced_secret(self, namespace, body):
        self.secrets[body.metadata.name] = body

    def delete_namespaced_secret(self, name, namespace):
        self.deleted_secrets.append(name)

    def create_namespaced_pod(self, namespace, body):
        self.pods.put(body)
        return SimpleNamespace(status=None)

    def read_namespaced_pod(self, name, namespace):
        return SimpleNamespace(status=SimpleNamespace(phase="Running"))

    def delete_namespaced_pod(self, name, namespace, body):
        return SimpleNamespace(status=None)


@pytest.fixture
def scratch():
    """The pod's own disk: a folder under /tmp that nobody may enter (pytest's tmp_path is root's),
    with a working folder of nobody's (``work``: the container's home, where the pool writes its logs)."""
    d = Path(tempfile.mkdtemp(prefix="fedgrid-pod-"))
    d.chmod(0o755)
    (d / "work").mkdir()
    shutil.chown(d / "work", "nobody", "nogroup")
    yield d
    # the interpreter's view is bound only inside the pool's own mount namespace: never delete through a mount
    assert not any(os.path.ismount(p) for p in d.rglob("*") if p.is_dir() and not p.is_symlink())
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cluster(monkeypatch, kubeconfig):
    """A kubeconfig that needs no network (a token) and the fake API behind every CoreV1Api()."""
    kubernetes = pytest.importorskip("kubernetes")
    api = FakeCoreV1()
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", lambda *a, **k: api)
    return api


def as_nobody(argv: list[str], scratch: Path) -> list[str]:
    """``argv`` run as nobody. Where this interpreter lives under a folder others may not enter
    (pyenv under /root), a private mount namespace lays a search-only folder over that one holding
    just the interpreter's path, as a pod's image would hold an interpreter; nothing else of it shows."""
    real = Path(sys.executable).resolve()
    closed = [p for p in real.parents if not p.stat().st_mode & stat.S_IXOTH]
    if not closed:
        return NOBODY + argv
    if len(closed) > 1 or not shutil.which("unshare"):
        pytest.skip(f"nobody cannot reach {real} (closed: {closed}) and util-linux's unshare cannot show it one")
    top = closed[0]
    child = real.relative_to(top).parts[0]
    view = scratch / "root-view"
    (view / child).mkdir(parents=True, exist_ok=True)
    view.chmod(0o711)
    script = f'mount --bind "{top / child}" "{view / child}" && mount --rbind "{view}" "{top}" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *NOBODY, *argv]


def pod_env(scratch: Path) -> dict[str, str]:
    """The container's environment: an image with this interpreter's environment on PATH."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(scratch / "work"), "LANG": "C.UTF-8"}


def in_background(fn: Callable[[], Any]) -> Future:
    """``fn()`` in a daemon thread (the driver: the test plays the cluster meanwhile)."""
    fut: Future = Future()

    def go() -> None:
        try:
            fut.set_result(fn())
        except BaseException as e:
            fut.set_exception(e)

    threading.Thread(target=go, daemon=True).start()
    return fut


def sent_pod(cluster: FakeCoreV1, run: Future) -> Any:
    """The block's pod once fedgrid sends it; fails at once if the run ends first (WAIT_S: a hang guard)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        with contextlib.suppress(queue.Empty):
            return cluster.pods.get(timeout=0.5)
        assert not run.done(), f"the run ended before it made a pod: {run.exception()!r}"
        assert time.monotonic() < deadline, f"no pod in {WAIT_S} s"


def finished(run: Future, pool: subprocess.Popen, log: Path) -> Any:
    """The run's result; fails at once if the pod's command exits first (its output says why)."""
    deadline = time.monotonic() + WAIT_S
    while not futures.wait([run], timeout=0.5).done:
        assert pool.poll() is None, f"the pod's command exited ({pool.returncode}): {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no result in {WAIT_S} s; the pod said: {log.read_text()[-2000:]}"
    return run.result()


def mount_secret(secret, mount: Path, mode: int) -> None:
    """The Secret's files as the kubelet lays them out: ``..data/<file>`` with a symlink per key,
    in a folder that is not 0700 (so Parsl could not use it as it is)."""
    (mount / "..data").mkdir(parents=True)
    for name, b64 in secret.data.items():
        (mount / "..data" / name).write_bytes(base64.b64decode(b64))
        (mount / "..data" / name).chmod(mode)
        (mount / name).symlink_to(Path("..data") / name)
    for d in (mount, mount / "..data"):
        d.chmod(0o755)


def test_a_pod_command_run_as_another_user_gets_its_keys_from_the_secret_and_trains(
        cluster, scratch, tmp_path, make_job):
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.rounds.runner import run

    work = scratch / "work"
    probe = subprocess.run(as_nobody([sys.executable, "-c", "import fedgrid.executors.certs, parsl"], scratch),
                           cwd=work, env=pod_env(scratch), capture_output=True, text=True, timeout=WAIT_S)
    if probe.returncode:
        pytest.skip(f"nobody cannot import fedgrid and parsl with {sys.executable}: {probe.stderr[-300:]}")

    mount = scratch / "mount"
    site = {"name": "pods", "clients": 2, "executor": {
        "kind": "kubernetes", "image": "unused", "namespace": "fl", "address": "127.0.0.1",
        "init_blocks": 1, "max_blocks": 1, "workers_per_node": 1, "cert_mount": str(mount),
        "worker_logdir_root": str(work / "logs"), "heartbeat_period": 1, "heartbeat_threshold": 5}}
    job = parse_job(make_job(tmp_path / "run", rounds=1, sites=[site],
                             data={"dataset": "digits", "clients": 2, "partition": {"kind": "dirichlet", "alpha": 0.5}},
                             round={"min_clients": 2, "deadline_s": WAIT_S},
                             train={"epochs": 1, "batch_size": 32, "lr": 0.05}))
    driver = in_background(lambda: run(job, quiet=True))
    pod = sent_pod(cluster, driver)  # the block's pod, sent once the executor has started
    (volume,) = [v for v in pod.spec.volumes if v.secret is not None]
    (container,) = pod.spec.containers
    mounts = [(m.mount_path, m.read_only) for m in container.volume_mounts if m.name == volume.name]
    assert mounts == [(str(mount), True)]
    secret = cluster.secrets[volume.secret.secret_name]
    assert sorted(secret.data) == ["client.key_secret", "server.key_secret"]
    mount_secret(secret, mount, volume.secret.default_mode)

    log = scratch / "pod.out"
    out = log.open("wb")
    pool = subprocess.Popen(as_nobody(container.command + container.args, scratch), cwd=work, env=pod_env(scratch),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        (row,) = finished(driver, pool, log).rows
        assert row["clients_ok"] == 2, (row["failures"], log.read_text())
        # trained by the pool run as nobody: its workers are still up
        for u in row["updates"]:
            assert psutil.Process(int(u["worker"].rsplit(":", 1)[1])).uids().real == 65534
    finally:
        with contextlib.suppress(ProcessLookupError):  # (gone already if it failed)
            os.killpg(pool.pid, signal.SIGTERM)
        pool.wait(timeout=WAIT_S)
        out.close()

    # the pool could not have read the driver's keys, and the interchange's secret key never left
    (certs,) = (tmp_path / "run" / "parsl").glob("*/pods/certificates")
    denied = subprocess.run(["cat", str(certs / "client.key_secret")], user="nobody", cwd="/", capture_output=True)
    assert denied.returncode != 0
    import zmq.auth

    _, server_secret = zmq.auth.load_certificate(certs / "server.key_secret")
    assert server_secret and all(server_secret not in base64.b64decode(v) for v in secret.data.values())
    assert cluster.deleted_secrets == [secret.metadata.name]  # withdrawn at shutdown
