"""`kubernetes`: Parsl HTEX whose worker pools run in pods (KubernetesProvider); one pod per block.

The image must provide ``process_worker_pool.py`` (parsl and fedgrid installed), and pods must
reach the interchange: run the driver in the cluster or set ``address`` to a reachable one.

Dry run: ``KubernetesProvider.__init__`` calls ``kubernetes.config.load_kube_config()``, which
besides parsing ~/.kube/config (or $KUBECONFIG) authenticates: it runs the user's ``exec`` plugin
(``aws eks get-token``, ``gke-gcloud-auth-plugin``...) and refreshes GCP/OIDC tokens over the
network. With no kubeconfig it falls back to the in-cluster config, and with neither it raises
ConfigException ("Failed to load both kube-config file and in-cluster configuration"). So for
``dry_run`` the real constructor runs with only that one call replaced, by a parse of the
kubeconfig file (``list_kube_config_contexts``: contexts, no authentication); the in-cluster
fallback (local files and env only) and everything else are Parsl's own. A dry run therefore still
fails, with Parsl's error, where a run would find no cluster config, but never runs a plugin or
refreshes a token. ``CoreV1Api()`` only builds a client object; nothing connects until a pod is made.

Certificates: a pod does not see the driver's run directory, where Parsl keeps the CurveZMQ keys
(fedgrid.executors.certs). When the executor starts, fedgrid puts the files a pool needs (the
client's key pair and the interchange's public key, never its secret key) in a Secret of the site's
namespace, ``fedgrid-certs-<site>-<digest of the keys>`` (created, or replaced if it exists), and
deletes it at shutdown. Every pod mounts it read-only at ``cert_mount`` (a
:func:`mounting_provider_class` provider), and its command copies the files into a private folder
and starts the pool with ``--cert_dir`` there. The driver's credentials must allow creating,
replacing and deleting Secrets in the namespace (as they allow pods).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal
from unittest import mock

from pydantic import Field, model_validator

from fedgrid.executors import certs, hpc
from fedgrid.executors.common import SpecBase, require

log = logging.getLogger(__name__)
CERT_VOLUME = "fedgrid-certs"  # the pod volume of the certificate Secret

Quantity = Annotated[str, Field(pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")]  # Kubernetes memory, e.g. 4Gi


class Volume(SpecBase):
    claim: str
    """The PersistentVolumeClaim's name."""
    mount_path: str
    """Where the pods mount it."""


class Spec(hpc.RemoteHtexSpec):
    kind: Literal["kubernetes"] = "kubernetes"
    """Worker pools in pods (Parsl's HTEX with a KubernetesProvider; needs `fedgrid[kubernetes]`).
    The driver's credentials must be allowed to create, replace and delete Secrets in `namespace`:
    the worker certificates travel in one (`fedgrid-certs-<site>-<digest>`), deleted at shutdown."""
    image: str
    """The container image, with Parsl and fedgrid installed."""
    namespace: str = "default"
    """The namespace the pods (and the certificates' Secret) are created in."""
    nodes_per_block: Literal[1] = 1
    """A block is one pod."""
    cpu_request: Annotated[float, Field(gt=0)] = 1.0
    """Cores each pod requests."""
    cpu_limit: Annotated[float, Field(gt=0)] = 2.0
    """Cores each pod may use; at least `cpu_request`."""
    memory_request: Quantity = "2Gi"
    """Memory each pod requests (torch alone needs more than Parsl's 250Mi default)."""
    memory_limit: Quantity = "4Gi"
    """Memory each pod may use."""
    gpu_resource: str = "nvidia.com/gpu"
    """The resource name `gpus_per_node` requests."""
    pod_name: str | None = None
    """A prefix of the pods' names; Parsl appends a job id."""
    service_account_name: str | None = None
    """The service account the pods run as."""
    secret: str | None = None
    """An imagePullSecret, for a private registry."""
    persistent_volumes: list[Volume] = []
    """Persistent volume claims mounted in every pod, `[{claim, mount_path}]`."""
    user_id: str | None = None
    """Run as this uid (with `group_id`: both are needed)."""
    group_id: str | None = None
    """Run as this gid (with `user_id`)."""
    run_as_non_root: bool = False
    """Refuse to run the pod's container as root."""
    annotations: dict[str, str] | None = None
    """Annotations of every pod."""
    cert_mount: Annotated[str, Field(pattern=r"^/")] = "/var/run/fedgrid/certs"
    """Where the pods mount the run's worker certificates (the Secret, read-only); the pool gets a
    private copy."""

    @model_validator(mode="after")
    def _request_within_limit(self):
        if self.cpu_request > self.cpu_limit:
            raise ValueError(f"cpu_request ({self.cpu_request}) exceeds cpu_limit ({self.cpu_limit})")
        return self

    @model_validator(mode="after")
    def _cert_mount_free(self):
        if any(v.claim == CERT_VOLUME or v.mount_path.rstrip("/") == self.cert_mount.rstrip("/")
               for v in self.persistent_volumes):
            raise ValueError(f"a persistent volume takes the certificates' volume name {CERT_VOLUME!r} or their "
                             f"mount path {self.cert_mount!r} (cert_mount)")
        return self


def provider_kwargs(spec: Spec) -> dict[str, Any]:
    """KubernetesProvider's arguments as plain (YAML-able) values."""
    gpus = {spec.gpu_resource: str(spec.gpus_per_node)} if spec.gpus_per_node else None
    return {"image": spec.image, "namespace": spec.namespace, "init_cpu": spec.cpu_request,
            "max_cpu": spec.cpu_limit, "init_mem": spec.memory_request, "max_mem": spec.memory_limit,
            "extra_requests": gpus, "extra_limits": gpus, "pod_name": spec.pod_name,
            "service_account_name": spec.service_account_name, "secret": spec.secret,
            "persistent_volumes": [[v.claim, v.mount_path] for v in spec.persistent_volumes],
            "user_id": spec.user_id, "group_id": spec.group_id, "run_as_non_root": spec.run_as_non_root,
            "annotations": spec.annotations, **hpc.block_kwargs(spec)}


def add_cert_volume(pod: Any, secret: str, mount: str) -> Any:
    """``pod`` (a V1Pod) with the Secret ``secret`` as a volume, mounted read-only at ``mount`` in
    each container. Mode 0444: the container's user may be any uid (``user_id``) and Parsl sets no
    fsGroup, so the files must be readable by it; they are in the pod's own volume, and the pool
    reads a private copy (Parsl wants its certificate folder 0700, which a Secret volume is not)."""
    from kubernetes import client

    pod.spec.volumes = [*(pod.spec.volumes or []), client.V1Volume(
        name=CERT_VOLUME, secret=client.V1SecretVolumeSource(secret_name=secret, default_mode=0o444))]
    for c in pod.spec.containers:
        c.volume_mounts = [*(c.volume_mounts or []),
                           client.V1VolumeMount(name=CERT_VOLUME, mount_path=mount, read_only=True)]
    return pod


class _MountingApi:
    """A CoreV1Api whose ``create_namespaced_pod`` adds the certificate volume to the pod; every
    other call is the wrapped client's."""

    def __init__(self, api: Any, provider: Any):
        self._api, self._provider = api, provider

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def create_namespaced_pod(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        p = self._provider
        if p.cert_secret is None:
            raise RuntimeError("no certificate Secret yet: pods are made only after the executor started")
        pod = add_cert_volume(body, p.cert_secret, p.cert_mount)
        return self._api.create_namespaced_pod(namespace=namespace, body=pod, **kwargs)


@functools.cache
def mounting_provider_class() -> type:
    from parsl.providers import KubernetesProvider

    class CertMountingKubernetesProvider(KubernetesProvider):
        """Parsl's KubernetesProvider whose pods also mount the certificate Secret.

        Parsl builds the whole pod in ``_create_pod`` and sends it in the same call, with no way to add
        a volume other than a PersistentVolumeClaim; so the API client is wrapped, and the pod gets
        the Secret's volume on its way to the cluster (:func:`add_cert_volume`). Nothing else differs.
        """

        cert_secret: str | None = None  # set when the executor has published its certificates

        def __init__(self, *, cert_mount: str, **kwargs: Any):
            super().__init__(**kwargs)
            self.cert_mount = cert_mount
            self.kube_client = _MountingApi(self.kube_client, self)

    return CertMountingKubernetesProvider


def provider(spec: Spec, dry_run: bool = False):
    from parsl.providers.kubernetes import kube

    kwargs = provider_kwargs(spec)
    kwargs["persistent_volumes"] = [tuple(v) for v in kwargs["persistent_volumes"]]
    cls = mounting_provider_class()
    if not dry_run:
        return cls(cert_mount=spec.cert_mount, **kwargs)
    real = kube.config
    file_only = SimpleNamespace(load_kube_config=real.list_kube_config_contexts,
                                load_incluster_config=real.load_incluster_config,
                                config_exception=real.config_exception)
    with mock.patch.object(kube, "config", file_only):
        return cls(cert_mount=spec.cert_mount, **kwargs)


def secret_name(site: str, files: dict[str, bytes]) -> str:
    """``fedgrid-certs-<site>-<digest>``: one Secret per key set, so two runs of a site in one
    namespace never replace each other's keys (Parsl makes new keys at every start)."""
    from parsl.utils import sanitize_dns_label_rfc1123

    digest = hashlib.sha256(b"".join(files[n] for n in sorted(files))).hexdigest()[:10]
    return f"fedgrid-certs-{sanitize_dns_label_rfc1123(site)}-{digest}"


def secret_body(name: str, files: dict[str, bytes]) -> Any:
    from kubernetes import client

    return client.V1Secret(metadata=client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/managed-by": "fedgrid"}),
                           type="Opaque", data={n: base64.b64encode(b).decode() for n, b in files.items()})


class SecretDelivery:
    """The pool files travel as a Secret of the site's namespace, which every pod mounts."""

    def __init__(self, provider: Any, site: str):
        self.provider, self.site = provider, site

    def publish(self, files: dict[str, bytes]) -> str:
        from kubernetes.client.exceptions import ApiException

        p = self.provider
        name = secret_name(self.site, files)
        body = secret_body(name, files)
        try:
            p.kube_client.create_namespaced_secret(namespace=p.namespace, body=body)
        except ApiException as e:
            if e.status != 409:  # 409: it exists (same keys): replace it
                raise
            p.kube_client.replace_namespaced_secret(name=name, namespace=p.namespace, body=body)
        p.cert_secret = name
        return certs.copy_from(p.cert_mount)

    def withdraw(self) -> None:
        """Delete the Secret; a failure is logged, not raised (the run's results are already kept)."""
        p = self.provider
        if p.cert_secret is None:
            return
        try:
            p.kube_client.delete_namespaced_secret(name=p.cert_secret, namespace=p.namespace)
        except Exception as e:  # an API error or a lost cluster: the keys are useless once the interchange is gone
            if getattr(e, "status", None) != 404:
                log.warning("could not delete Secret %s/%s: %s", p.namespace, p.cert_secret, e)


def provider_config(spec: Spec) -> dict[str, Any]:
    """``engine.provider`` of a Globus Compute endpoint's config.yaml for this site."""
    return hpc.provider_config("KubernetesProvider", provider_kwargs(spec))


def build(site: Any, run_dir: Path, dry_run: bool = False):
    require("kubernetes", site=site.name, kind="kubernetes", extra="kubernetes")
    prov = provider(site.executor, dry_run)
    return hpc.remote_htex(site, prov, site.executor, dry_run=dry_run, certs=SecretDelivery(prov, site.name))


def describe(site: Any) -> str:
    s: Spec = site.executor
    return hpc.describe_htex("Kubernetes", s, {"namespace": s.namespace, "image": s.image,
                                           "cpu": f"{s.cpu_request:g}-{s.cpu_limit:g}",
                                           "memory": f"{s.memory_request}-{s.memory_limit}"}, node="pod")
