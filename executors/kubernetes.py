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
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal
from unittest import mock

from pydantic import Field, model_validator

from fedgrid.executors import hpc
from fedgrid.executors.common import SpecBase, require

Quantity = Annotated[str, Field(pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")]  # Kubernetes memory, e.g. 4Gi


class Volume(SpecBase):
    claim: str  # PersistentVolumeClaim name
    mount_path: str


class Spec(hpc.RemoteHtexSpec):
    kind: Literal["kubernetes"] = "kubernetes"
    image: str  # container image with parsl and fedgrid installed
    namespace: str = "default"
    nodes_per_block: Literal[1] = 1  # a block is one pod
    cpu_request: Annotated[float, Field(gt=0)] = 1.0  # cores
    cpu_limit: Annotated[float, Field(gt=0)] = 2.0
    memory_request: Quantity = "2Gi"  # torch alone needs more than Parsl's 250Mi default
    memory_limit: Quantity = "4Gi"
    gpu_resource: str = "nvidia.com/gpu"  # resource name gpus_per_node requests
    pod_name: str | None = None  # prefix; Parsl appends a job id
    service_account_name: str | None = None
    secret: str | None = None  # imagePullSecret for a private registry
    persistent_volumes: list[Volume] = []
    user_id: str | None = None  # run as this uid/gid (both needed)
    group_id: str | None = None
    run_as_non_root: bool = False
    annotations: dict[str, str] | None = None

    @model_validator(mode="after")
    def _request_within_limit(self):
        if self.cpu_request > self.cpu_limit:
            raise ValueError(f"cpu_request ({self.cpu_request}) exceeds cpu_limit ({self.cpu_limit})")
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


def provider(spec: Spec, dry_run: bool = False):
    from parsl.providers.kubernetes import kube

    kwargs = provider_kwargs(spec)
    kwargs["persistent_volumes"] = [tuple(v) for v in kwargs["persistent_volumes"]]
    if not dry_run:
        return kube.KubernetesProvider(**kwargs)
    real = kube.config
    file_only = SimpleNamespace(load_kube_config=real.list_kube_config_contexts,
                                load_incluster_config=real.load_incluster_config,
                                config_exception=real.config_exception)
    with mock.patch.object(kube, "config", file_only):
        return kube.KubernetesProvider(**kwargs)


def provider_config(spec: Spec) -> dict[str, Any]:
    """``engine.provider`` of a Globus Compute endpoint's config.yaml for this site."""
    return hpc.provider_config("KubernetesProvider", provider_kwargs(spec))


def build(site: Any, run_dir: Path, dry_run: bool = False):
    require("kubernetes", site=site.name, kind="kubernetes", extra="kubernetes")
    return hpc.remote_htex(site, provider(site.executor, dry_run), site.executor, dry_run=dry_run)


def describe(site: Any) -> str:
    s: Spec = site.executor
    return hpc.describe_htex("Kubernetes", s, {"namespace": s.namespace, "image": s.image,
                                           "cpu": f"{s.cpu_request:g}-{s.cpu_limit:g}",
                                           "memory": f"{s.memory_request}-{s.memory_limit}"}, node="pod")
