"""`globus_compute`: a Globus Compute endpoint, through Parsl's GlobusComputeExecutor.

A real site wraps ``globus_compute_sdk.Executor(endpoint_id=...)``: tasks go to the hosted service
and on to the endpoint, which runs them with its own engine and provider. Authentication is Globus's
own: the sdk's login flow, or ``GLOBUS_COMPUTE_CLIENT_ID`` / ``GLOBUS_COMPUTE_CLIENT_SECRET`` for a
service client. fedgrid never reads, stores or logs a token.

With ``emulate: true`` the endpoint side runs for real on this machine (see
:mod:`fedgrid.executors.gc_emulator`): only the hop through the hosted service is skipped, and the
service's limits are enforced the same way. Rehearse a job with it before deploying an endpoint.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from fedgrid.executors.common import SpecBase

if TYPE_CHECKING:  # imported in build only: validating a job never loads the sdk
    from globus_compute_sdk import Executor

# The hosted service's limit, per task submission and per result (TASK_PAYLOAD_TOO_LARGE,
# MaxResultSizeExceeded).
PAYLOAD_LIMIT = 10 * 1024 * 1024


class Spec(SpecBase):
    kind: Literal["globus_compute"] = "globus_compute"
    """A Globus Compute endpoint (Parsl's GlobusComputeExecutor around `globus_compute_sdk.Executor`),
    or one emulated on this machine to rehearse a job."""
    endpoint: str | None = None
    """The endpoint's UUID (`globus-compute-endpoint list`); required unless `emulate: true`."""
    user_endpoint_config: dict[str, Any] = Field(default_factory=dict)
    """Values for a templated (multi-user) endpoint's config; sent with every task, so JSON only."""
    resource_specification: dict[str, Any] = Field(default_factory=dict)
    """Per-task resources, e.g. MPI ranks; sent with every task, so JSON only."""
    emulate: bool = False
    """Run the endpoint's engine on this machine (a GlobusComputeEngine with HTEX workers, the
    service's limits enforced) instead of reaching the service."""
    workers: Annotated[int, Field(ge=1)] = 1
    """The emulated engine's workers; for `fedgrid endpoint-config`, workers per node."""
    provider: dict[str, Any] = Field(default_factory=dict)
    """The endpoint side's provider, for `fedgrid endpoint-config`: the options of a `slurm`,
    `pbs`, ... site, with its `kind`."""
    python_env: str | None = None
    """The environment with fedgrid installed at the endpoint (a venv or conda prefix), activated by
    the `worker_init` that `fedgrid endpoint-config` prints."""

    payload_limit: ClassVar[int | None] = PAYLOAD_LIMIT
    # ComputeSerializer sends numpy arrays as base64-encoded pickles: ~1.37x the raw bytes, plus the
    # task's other fields
    payload_overhead: ClassVar[float] = 1.4

    def runs_here(self) -> bool:
        return self.emulate  # the emulated endpoint's engine runs on this machine

    def node_workers(self) -> int | None:
        return self.workers

    @model_validator(mode="after")
    def _endpoint_needed(self) -> Spec:
        if not self.emulate and self.endpoint is None:
            raise ValueError("endpoint: required (the endpoint's UUID), unless emulate: true")
        return self

    @field_validator("endpoint")
    @classmethod
    def _uuid(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(uuid.UUID(str(v)))
        except ValueError:
            raise ValueError(f"expected an endpoint UUID such as {uuid.UUID(int=0)}, got {v!r}") from None

    @field_validator("user_endpoint_config", "resource_specification")
    @classmethod
    def _json(cls, v: dict[str, Any]) -> dict[str, Any]:
        import json

        try:
            json.dumps(v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"must be JSON-serializable (sent to the service with every task): {e}") from None
        return v

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v:
            endpoint_provider(v)  # validated as that kind's Spec; raises with the valid keys
        return v


ENDPOINT_PROVIDER_KINDS = ("htex", "slurm", "pbs", "kubernetes")


def endpoint_provider(block: dict[str, Any]) -> Any:
    """The endpoint side's provider block, validated as the Spec of that site kind."""
    from fedgrid.executors import kind_module

    kind = block.get("kind", "htex")
    if kind not in ENDPOINT_PROVIDER_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(ENDPOINT_PROVIDER_KINDS)}, got {kind!r}")
    spec_cls = kind_module(kind).Spec
    try:
        return spec_cls.model_validate({**block, "kind": kind})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ValueError(f"{key}: unknown key for a {kind} provider; valid keys: "
                             f"{', '.join(sorted(spec_cls.model_fields))}") from None
        got = err.get("input")
        shown = f", got {got!r}" if not isinstance(got, dict | list) else ""
        raise ValueError(f"{key}: {err['msg'].replace('Input should be', 'expected')}{shown}") from None


def build(site: Any, run_dir: Path, dry_run: bool = False):
    from parsl.executors import GlobusComputeExecutor

    spec: Spec = site.executor
    sdk: Executor  # the emulated endpoint is one too
    if spec.emulate:
        from fedgrid.executors.gc_emulator import EmulatedEndpoint

        sdk = EmulatedEndpoint(endpoint_id=spec.endpoint or str(uuid.uuid4()),
                               run_dir=run_dir / "endpoints" / site.name, workers=spec.workers,
                               resource_specification=spec.resource_specification or None,
                               user_endpoint_config=spec.user_endpoint_config or None, label=site.name,
                               start=not dry_run)
    else:
        from globus_compute_sdk import Client, Executor

        # A dry run (`fedgrid check`) must not trigger a login: the client's version check is the
        # first request it makes, so skip it there; a real run logs in here, before any round starts.
        client = Client(do_version_check=not dry_run)
        sdk = Executor(endpoint_id=spec.endpoint, client=client,
                       resource_specification=spec.resource_specification or None,
                       user_endpoint_config=spec.user_endpoint_config or None, label=site.name)
    return GlobusComputeExecutor(executor=sdk, label=site.name)


def dispose(executor: Any) -> None:
    """Release an executor built with ``dry_run`` (Parsl's own shutdown would dial the service)."""
    executor.executor.shutdown(wait=False, cancel_futures=True)


def describe(site: Any) -> str:
    spec: Spec = site.executor
    if spec.emulate:
        return (f"Globus Compute endpoint, emulated here (GlobusComputeEngine, {spec.workers} worker(s); "
                f"{PAYLOAD_LIMIT // 2**20} MB service limits enforced)")
    extra = ""
    if spec.user_endpoint_config:
        extra += f", user_endpoint_config {sorted(spec.user_endpoint_config)}"
    if spec.resource_specification:
        extra += f", resource_specification {sorted(spec.resource_specification)}"
    return f"Globus Compute endpoint {spec.endpoint}{extra}"
