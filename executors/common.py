"""What every site kind shares: the options base class and the optional-package check.

A kind's module defines ``Spec`` (its YAML options, a pydantic model whose ``kind`` field is the
discriminator), ``build(site, run_dir, dry_run=False)`` returning an unstarted Parsl executor
labelled with the site's name, and ``describe(site)`` for `fedgrid check`. Modules import Parsl
and any optional package inside ``build``, so validating a job never needs a cloud SDK.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from fedgrid.executors.batch import Block, Scheduler


class SpecBase(BaseModel):
    """Options of one site kind; unknown keys are rejected with the list of valid ones.

    A kind also declares what the driver must know about it, here on its Spec, so adding a kind
    touches only its own module:

    - ``scales``: blocks are requested on demand from a batch scheduler or a cloud (Parsl's scaling
      strategy must run, and no warm-up task may be what asks for nodes);
    - ``in_driver``: clients run as threads of the driver process (no worker process to kill);
    - ``watch_workers``: a site that had workers and has none is down (not waiting in a queue),
      judged from its interchange's connected managers;
    - ``payload_limit``: the most bytes a task or a result may carry (a hosted service's cap), or
      None when there is no such cap; ``payload_overhead``: how much its serializer inflates params;
    - ``runs_here()``: its processes run on this machine, so its data paths and a store under the
      run directory are reachable from here;
    - ``scheduler()``: the batch scheduler whose own answers watch its blocks (a ``BlockWatch``), or
      None.

    These are class-level for a kind whose options say everything. A kind whose capabilities depend
    on what it builds (``parsl``: the user's executor) reads them in ``resolve`` and overrides them
    per instance.
    """

    # use_attribute_docstrings: the string under each option is its description, which the job-file
    # reference (docs/reference/job-file.md) is generated from
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    if TYPE_CHECKING:
        # The discriminator, a field of each kind's Spec (``kind: Literal["slurm"] = "slurm"``).
        @property
        def kind(self) -> str: ...

        # Read-only to the driver, which is what lets a kind set them either per class (a ClassVar)
        # or per instance (a property: `parsl`); at run time they are the class attributes below.
        @property
        def scales(self) -> bool: ...

        @property
        def in_driver(self) -> bool: ...

        @property
        def watch_workers(self) -> bool: ...

        @property
        def payload_limit(self) -> int | None: ...

        @property
        def payload_overhead(self) -> float: ...
    else:
        scales: ClassVar[bool] = False
        in_driver: ClassVar[bool] = False
        watch_workers: ClassVar[bool] = False
        payload_limit: ClassVar[int | None] = None
        payload_overhead: ClassVar[float] = 1.0

    def runs_here(self) -> bool:
        return False

    def scheduler(self) -> Scheduler | None:
        """By default the kind module's own ``SCHEDULER`` and ``query`` when it is a
        :class:`BatchKind` (slurm, pbs)."""
        return scheduler_of(sys.modules[type(self).__module__])

    def node_workers(self) -> int | None:
        """Workers one node runs at once, or None where the kind has no such notion."""
        return None

    def nodes(self) -> int:
        """Nodes the site can hold at once (nodes per block x blocks); 1 for a single machine."""
        return 1

    def site_workers(self) -> int:
        """Workers the site can run at once (1 when unknown, e.g. an endpoint's hidden workers)."""
        return (self.node_workers() or 1) * self.nodes()

    def resolve(self, site: str) -> None:
        """Called with the site's name once the job is parsed (flow/config/checks.py), before any
        capability is read. Nothing to do for a kind whose options say everything; a problem is a
        :class:`SpecError` naming the option."""


@runtime_checkable
class SiteKind(Protocol):
    """A site kind: a module under fedgrid.executors (see the module docstring)."""

    Spec: type[SpecBase]

    def build(self, site: Any, run_dir: Path, dry_run: bool = False) -> Any:
        """The site's unstarted Parsl executor, labelled with its name."""

    def describe(self, site: Any) -> str:
        """One line for `fedgrid check`."""


@runtime_checkable
class BatchKind(Protocol):
    """A kind whose blocks are batch jobs fedgrid watches with the scheduler's own answers."""

    SCHEDULER: str  # its name in messages and in the run's block records ("Slurm", "PBS")
    COMMAND: str  # the status command that must be on PATH for `fedgrid status` to ask it

    def query(self, job_ids: list[str]) -> dict[str, Block] | None:
        """Each job's state, reason and walltime left; None when the scheduler did not answer."""


def scheduler_of(module: object) -> Scheduler | None:
    """The scheduler of a :class:`BatchKind` module (any module, or a kind as :class:`SiteKind`), else None."""
    return Scheduler(module.SCHEDULER, module.query) if isinstance(module, BatchKind) else None


@runtime_checkable
class Disposable(Protocol):
    """A kind whose built executor holds something to release even if never started."""

    def dispose(self, executor: Any) -> None: ...


@runtime_checkable
class EndpointProvider(Protocol):
    """A kind whose blocks a Globus Compute endpoint can run (``fedgrid endpoint-config``)."""

    def provider_config(self, spec: Any) -> dict[str, Any]: ...


class SpecError(ValueError):
    """A site's executor option that cannot work (`field`: the option's key in the executor
    block, `why`: what was expected); the job check turns it into a ConfigError naming
    ``sites.<i>.executor.<field>``."""

    def __init__(self, field: str, why: str):
        self.field, self.why = field, why
        super().__init__(f"{field}: {why}")


class MissingExtra(Exception):
    """A site kind needs a package that is not installed; the message names the pip extra."""

    def __init__(self, site: str, kind: str, package: str, extra: str):
        self.site, self.kind, self.package, self.extra = site, kind, package, extra
        super().__init__(f"site {site!r} (kind {kind}) needs the {package!r} package: "
                         f"pip install 'fedgrid[{extra}]'")


def require(module: str, *, site: str, kind: str, extra: str) -> ModuleType:
    """Import an optional package a site kind needs, or raise :class:`MissingExtra`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(site, kind, module.split(".")[0], extra) from None
