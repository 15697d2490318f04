"""`fedgrid endpoint-config SITE --job JOB`: the Globus Compute endpoint config a site should run.

The output is the endpoint's ``config.yaml``: a ``GlobusComputeEngine`` whose provider is the one
described in the site's ``executor.provider`` block (Slurm, PBS, Kubernetes, or this machine), with
a ``worker_init`` that activates the environment where fedgrid is installed (tasks call fedgrid's
train app by reference, so the endpoint must be able to import it). For a multi-user endpoint
(the site sets ``user_endpoint_config``) it is instead a ``user_config_template.yaml.j2`` in which
each value the job sends per task is a Jinja placeholder, so the endpoint admin sees exactly which
knobs the job turns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fedgrid.flow.config import ConfigError, Job

if TYPE_CHECKING:
    from fedgrid.executors.globus_compute import Spec as GlobusComputeSpec


def _provider(pspec: Any) -> dict[str, Any]:
    from fedgrid.executors import kind_module
    from fedgrid.executors.common import EndpointProvider

    if pspec is None or pspec.kind == "htex":
        return {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 0, "max_blocks": 1}
    kind = kind_module(pspec.kind)
    if not isinstance(kind, EndpointProvider):
        raise ValueError(f"an endpoint cannot run {pspec.kind!r} blocks")
    return kind.provider_config(pspec)


def _workers(spec: GlobusComputeSpec, pspec: Any) -> int:
    """Workers per node: the site's `workers` when set, else what the provider block implies."""
    from fedgrid.executors import workers_per_node

    n = workers_per_node(pspec) if pspec is not None else None  # remote kinds derive it from cores
    if "workers" in spec.model_fields_set or not n:
        return spec.workers
    return int(n)


def _worker_init(spec: GlobusComputeSpec, provider: dict[str, Any]) -> str | None:
    lines = [ln for ln in str(provider.get("worker_init") or "").splitlines() if ln.strip()]
    env = spec.python_env
    if env:
        lines.append(f"source {env}/bin/activate")
    return "\n".join(lines) or None


def endpoint_config(job: Job, site_name: str, file: str | Path) -> str:
    try:
        site = job.site(site_name)
    except StopIteration:
        raise ConfigError(file, "sites", f"no site named {site_name!r}; sites: "
                          f"{', '.join(s.name for s in job.sites)}") from None
    from fedgrid.executors.globus_compute import Spec, endpoint_provider

    spec = site.executor
    if not isinstance(spec, Spec):
        raise ConfigError(file, f"sites.{site_name}.executor.kind", f"expected globus_compute for an endpoint "
                          f"config, got {spec.kind!r}")
    pspec = endpoint_provider(spec.provider) if spec.provider else None  # validated once, used twice
    provider = _provider(pspec)
    init = _worker_init(spec, provider)
    if init:
        provider["worker_init"] = init
    uec = spec.user_endpoint_config
    for key in uec:  # per-task values become placeholders the endpoint fills in
        if key in provider:
            provider[key] = f"{{{{ {key} }}}}"
    engine: dict[str, Any] = {"type": "GlobusComputeEngine", "max_workers_per_node": _workers(spec, pspec),
                              "provider": provider}
    doc = {"display_name": f"fedgrid-{job.name}-{site.name}", "engine": engine}
    name = f"fedgrid-{site.name}"
    target = "user_config_template.yaml.j2" if uec else "config.yaml"
    head = [
        f"# Globus Compute endpoint for site {site.name!r} of job {job.name!r} ({file}).",
        f"# 1. In the environment the workers use: pip install 'fedgrid[endpoint]' (same fedgrid, Python {_pyver()}).",
        f"# 2. globus-compute-endpoint configure {name}",
        f"# 3. Save this as ~/.globus_compute/{name}/{target}",
        f"# 4. globus-compute-endpoint start {name}; put the endpoint id it prints in the job's",
        f"#    sites[{site.name}].executor.endpoint, then `fedgrid check` and `fedgrid run`.",
    ]
    if not init:
        head.append("# WARNING: no worker_init: set executor.python_env (or provider.worker_init) so workers "
                    "can import fedgrid.")
    if uec:
        head.append(f"# Multi-user endpoint: the job sends user_endpoint_config {sorted(uec)} with every task.")
        missing = sorted(k for k in uec if k not in provider)
        if missing:
            head.append(f"# Not provider settings, use them where your template needs them: {missing}")
    if spec.emulate:
        head.append("# Note: this site has emulate: true; set it to false once the endpoint is running.")
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _pyver() -> str:
    import sys

    return f"{sys.version_info.major}.{sys.version_info.minor}"
