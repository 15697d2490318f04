"""`parsl`: a Parsl executor the user builds, or one that a running Parsl workflow already has.

The block takes one of two forms:

- ``factory: package.module:function``: a function that returns a new, unstarted Parsl executor,
  for a provider, launcher or worker_init that fedgrid has no kind for (or a different executor:
  ThreadPoolExecutor, WorkQueue, TaskVine). If its first parameter has no default it is called with
  the site's name; otherwise it is called with no arguments. It is imported on the driver after
  ``client.python_path`` has been put on sys.path. fedgrid labels the executor with the site's name
  (any label the function set is replaced, since apps are routed to a site by label), and it raises
  a fixed LocalProvider's ``min_blocks`` to ``init_blocks``, so the site's only block is never scaled
  in as idle.
- ``label: <executor label>``: the site runs on that executor of a Parsl workflow's
  DataFlowKernel (``fedgrid.submit`` / ``fedgrid.run(job, dfk=...)``). fedgrid never starts, scales
  down or shuts down an executor it did not make.

The rest of fedgrid (warm-up, the Parsl scaling strategy, site health, batch-job watching, the
transfer plan, the data checks) reads a site's capabilities from its Spec. Here they come from the
executor itself (:func:`traits`). A ThreadPoolExecutor runs in the driver. An executor whose
provider is a LocalProvider runs here. Only a LocalProvider that starts all its blocks at once
(``init_blocks`` at least 1 and at least ``max_blocks``) or an executor with no provider is
fixed: it gets warm tasks and, if it is HTEX-like, has its workers watched. Any other provider
scales on demand, so it gets no warm task and Parsl's strategy runs. A SlurmProvider or
PBSProProvider has its blocks watched with the slurm or pbs kind's own ``query``, every
``status_poll_s``.

The factory is called once when the job is checked, in check mode (no address discovery beyond
this machine's interfaces and no scheduler command, as in ``fedgrid check``), and once per run for
the executor that actually runs. An executor can only start once, so it must return a new executor
on each call.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from fedgrid.executors import batch, parsl_api
from fedgrid.executors.common import SpecBase, SpecError, scheduler_of

OBJECT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"

# the DataFlowKernel of the workflow a job is being parsed for (fedgrid.submit / run(dfk=...)):
# a `label` site reads its capabilities from that DFK's executor
_WORKFLOW: ContextVar[Any] = ContextVar("fedgrid_parsl_workflow", default=None)
# every executor a factory has returned: one returned twice was, or will be, started twice
_MADE: weakref.WeakSet[Any] = weakref.WeakSet()


@dataclass(frozen=True)
class Traits:
    """What fedgrid needs to know about one Parsl executor, read from the executor itself."""

    executor: str  # its class
    label: str
    provider: str | None
    launcher: str | None
    workers: int  # per node
    nodes_per_block: int
    init_blocks: int
    max_blocks: int
    in_driver: bool  # threads of the driver process
    runs_here: bool  # its workers run on this machine
    scales: bool  # blocks come and go on demand: Parsl's strategy runs, no warm task
    watch_workers: bool  # a fixed HTEX-like pool: no connected managers after some means down
    scheduler: str | None  # the kind (slurm, pbs) whose query watches its batch jobs
    payload_limit: int | None = None
    payload_overhead: float = 1.0

    def summary(self) -> str:
        """What `fedgrid check` shows besides the class: how it runs and what fedgrid does with it."""
        parts = [f"label {self.label}"]
        if self.provider:
            parts += [p for p in (self.provider, self.launcher) if p]
            parts.append(f"{self.nodes_per_block} node(s)/block, {self.init_blocks} block(s) at start, up to "
                         f"{self.max_blocks}")
        parts.append(f"{self.workers} {'thread(s)' if self.in_driver else 'worker(s)/node'}")
        parts.append("in the driver" if self.in_driver else "runs here" if self.runs_here else "runs elsewhere")
        parts.append("blocks on demand, no warm-up" if self.scales else "warmed before round 1")
        if self.watch_workers:
            parts.append("workers watched")
        if self.scheduler:
            parts.append(f"batch jobs watched with the {self.scheduler} kind's query")
        return ", ".join(parts)


# an executor nothing is known of yet (a `label` site before its workflow is known): the cautious
# reading, as a remote batch site would be read
UNKNOWN = Traits("?", "?", None, None, 1, 1, 0, 1, in_driver=False, runs_here=False, scales=True,
                 watch_workers=False, scheduler=None)


class Spec(SpecBase):
    kind: Literal["parsl"] = "parsl"
    """Any Parsl executor your own function builds, or an executor of the Parsl workflow the job
    runs in. Give exactly one of `factory` and `label`."""
    factory: Annotated[str, Field(pattern=OBJECT_PATH)] | None = None
    """`package.module:function` returning a new, unstarted Parsl executor each time it is called
    (with the site's name when its first parameter has no default)."""
    label: Annotated[str, Field(min_length=1)] | None = None
    """An executor of the workflow's DataFlowKernel (`fedgrid.submit` or `fedgrid.run(job,
    dfk=...)`; an error under `fedgrid run`)."""
    status_poll_s: Annotated[float, Field(ge=1)] = 5.0
    """How often the driver asks a SlurmProvider's or PBSProProvider's scheduler about the blocks."""

    _traits: Traits | None = PrivateAttr(default=None)
    _seen: Any = PrivateAttr(default=None)  # the executor read: built in check mode, or the workflow's

    @model_validator(mode="after")
    def _one_source(self) -> Spec:
        if (self.factory is None) == (self.label is None):
            raise ValueError("expected exactly one of factory (package.module:function returning a Parsl "
                             "executor) or label (an executor of the Parsl workflow the job is submitted into)")
        return self

    def resolve(self, site: str) -> None:
        """Read the capabilities: call the factory in check mode, or look the label up in the
        workflow's DataFlowKernel (the one the job is being parsed for, if any)."""
        if self.factory is not None:
            with checking():
                self.bind(make(self.factory, site))
        elif (dfk := _WORKFLOW.get()) is not None:
            self.bind(borrowed_executor(dfk, self.label))

    def bind(self, executor: Any, shown: bool = True) -> None:
        """Take the capabilities from `executor`, which the site runs on (or would run on).
        `shown`: it is also what a dry run (`fedgrid check`) shows; never an executor a run starts."""
        self._traits = traits(executor)
        if shown:
            self._seen = executor

    @property
    def known(self) -> Traits:
        """The capabilities read so far (UNKNOWN before any: a `label` site outside its workflow)."""
        return self._traits or UNKNOWN

    # the capabilities SpecBase declares per class, per instance here
    @property
    def scales(self) -> bool:
        return self.known.scales

    @property
    def in_driver(self) -> bool:
        return self.known.in_driver

    @property
    def watch_workers(self) -> bool:
        return self.known.watch_workers

    @property
    def payload_limit(self) -> int | None:
        return self.known.payload_limit

    @property
    def payload_overhead(self) -> float:
        return self.known.payload_overhead

    @property
    def nodes_per_block(self) -> int:
        return self.known.nodes_per_block

    @property
    def max_blocks(self) -> int:
        return self.known.max_blocks

    def workers(self) -> int:
        return self.known.workers

    def node_workers(self) -> int | None:
        return self.known.workers

    def nodes(self) -> int:
        return self.known.nodes_per_block * self.known.max_blocks

    def runs_here(self) -> bool:
        return self.known.runs_here

    def scheduler(self) -> batch.Scheduler | None:
        from fedgrid.executors import kind_module

        kind = self.known.scheduler
        return scheduler_of(kind_module(kind)) if kind else None


# -- the factory ------------------------------------------------------------------------------------


def make(path: str, site: str) -> Any:
    """A new executor from the factory at `path`, labelled `site`; a SpecError on ``factory``
    says why not (unimportable, not callable, raised, returned something else, returned the
    same object twice)."""
    fn = load(path)
    args = arguments(fn, path, site)
    try:
        ex = fn(*args)
    except Exception as e:  # noqa: BLE001 - whatever the user's function raises is reported in one line
        called = f"{path}({', '.join(map(repr, args))})"
        raise SpecError("factory", f"{called} raised {type(e).__name__}: {e}") from None
    check_executor(ex, path)
    if ex in _MADE:
        raise SpecError("factory", f"{path} returned an executor it had returned before; expected a new "
                        "executor at each call (an executor starts once, and fedgrid calls the function "
                        "when it checks the job and again for each run)")
    _MADE.add(ex)
    ex.label = site
    return ex


def load(path: str) -> Callable[..., Any]:
    import importlib

    module, _, name = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises on import is reported in one line
        raise SpecError("factory", f"cannot import module {module!r}: {type(e).__name__}: {e} (is it on "
                        "client.python_path or the PYTHONPATH?)") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise SpecError("factory", f"module {module!r} has no {name!r}")
    if not callable(fn):
        raise SpecError("factory", f"{path} is not callable ({type(fn).__name__}); expected a function returning a "
                        "Parsl executor")
    return fn


def arguments(fn: Callable[..., Any], path: str, site: str) -> tuple[str, ...]:
    """``(site,)`` when the function's first parameter has no default, ``()`` when it needs none."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): try it without arguments
        return ()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.default is p.empty and p.kind in (*positional, p.KEYWORD_ONLY)]
    if not required:
        return ()
    if len(required) == 1 and required[0].kind in positional:
        return (site,)
    raise SpecError("factory", f"{path}{inspect.signature(fn)} needs {len(required)} argument(s); expected a "
                    "function of the site's name (one parameter) or of none")


def check_executor(ex: Any, path: str) -> None:
    from parsl.config import Config
    from parsl.executors.base import ParslExecutor

    if isinstance(ex, ParslExecutor):
        return
    hint = ("; return one of its executors (config.executors[0])" if isinstance(ex, Config) else
            "; return a new one at each call" if ex is None else "")
    raise SpecError("factory", f"{path} returned {type(ex).__name__}, expected a Parsl executor "
                    f"(parsl.executors.HighThroughputExecutor, ThreadPoolExecutor, ...){hint}")


@contextlib.contextmanager
def checking() -> Iterator[None]:
    """What `fedgrid check`'s dry runs do, for the factory's constructors: HTEX address discovery
    stays on this machine's interfaces (no api.ipify.org query), and a provider runs no scheduler
    command (SlurmProvider's ``sacct``)."""
    from parsl.providers.cluster_provider import ClusterProvider

    from fedgrid.executors import hpc

    with parsl_api.dry_run_discovery(hpc._interface_addresses), hpc._no_commands(ClusterProvider):
        yield


# -- capabilities -----------------------------------------------------------------------------------


def traits(ex: Any) -> Traits:
    """How fedgrid treats `ex` (see the module docstring for the rules)."""
    from parsl.executors import ThreadPoolExecutor
    from parsl.providers import LocalProvider

    provider = getattr(ex, "provider", None)
    in_driver = isinstance(ex, ThreadPoolExecutor)
    here = in_driver or isinstance(provider, LocalProvider)
    init, top = (provider.init_blocks, provider.max_blocks) if provider is not None else (1, 1)
    fixed = provider is None or (isinstance(provider, LocalProvider) and init >= max(1, top))
    launcher = getattr(provider, "launcher", None)
    limit, overhead = payload(ex)
    return Traits(executor=type(ex).__name__, label=ex.label,
                  provider=type(provider).__name__ if provider is not None else None,
                  launcher=type(launcher).__name__ if launcher is not None else None,
                  workers=workers(ex, in_driver, here),
                  nodes_per_block=int(getattr(provider, "nodes_per_block", 1) or 1),
                  init_blocks=init, max_blocks=top, in_driver=in_driver, runs_here=here, scales=not fixed,
                  watch_workers=fixed and callable(getattr(ex, "connected_managers", None)),
                  scheduler=scheduler_kind(provider), payload_limit=limit, payload_overhead=overhead)


def workers(ex: Any, in_driver: bool, here: bool) -> int:
    """Clients a node of `ex` runs at once: a thread pool's threads; Parsl's own count for the
    others, except that an HTEX pool on this machine with no cap runs one worker per
    `cores_per_worker` cores here (Parsl's count guesses 1, knowing nothing of the nodes)."""
    if in_driver:
        return max(1, int(ex.max_threads or 1))
    per = getattr(ex, "workers_per_node", 1)
    if here and getattr(ex, "max_workers_per_node", None) == math.inf:
        per = (os.cpu_count() or 1) // max(getattr(ex, "cores_per_worker", 1) or 1, 1e-9)
        if gpus := getattr(ex, "available_accelerators", None):
            per = min(per, len(gpus))
    return max(1, int(per)) if isinstance(per, int | float) and math.isfinite(per) else 1


def scheduler_kind(provider: Any) -> str | None:
    """The batch kind whose ``query`` can ask `provider`'s scheduler about its jobs."""
    from parsl.providers import PBSProProvider, SlurmProvider

    kinds = {SlurmProvider: "slurm", PBSProProvider: "pbs"}
    return next((kind for cls, kind in kinds.items() if isinstance(provider, cls)), None)


def payload(ex: Any) -> tuple[int | None, float]:
    """A Globus Compute executor carries what the hosted service allows, as the globus_compute kind."""
    if not any(c.__name__ == "GlobusComputeExecutor" for c in type(ex).__mro__):
        return None, 1.0
    from fedgrid.executors.globus_compute import Spec as GlobusSpec

    return GlobusSpec.payload_limit, GlobusSpec.payload_overhead


# -- a workflow's executors -------------------------------------------------------------------------


@contextlib.contextmanager
def workflow(dfk: Any) -> Iterator[None]:
    """Jobs parsed inside read their `label` sites from `dfk`'s executors."""
    token = _WORKFLOW.set(dfk)
    try:
        yield
    finally:
        _WORKFLOW.reset(token)


def borrowed(site: Any) -> str | None:
    """The label of the workflow executor `site` runs on, when its block names one."""
    return getattr(site.executor, "label", None) if site.executor.kind == "parsl" else None


def borrowed_executor(dfk: Any, label: str | None) -> Any:
    found = dfk.executors.get(label)
    if found is None:
        have = ", ".join(k for k in dfk.executors if not k.startswith("_parsl")) or "none"
        raise SpecError("label", f"the workflow's DataFlowKernel has no executor labelled {label!r}; its "
                        f"executors: {have}")
    return found


# -- the kind's functions ---------------------------------------------------------------------------


def build(site: Any, run_dir: Path, dry_run: bool = False) -> Any:
    """The factory's executor for a run of the job's own; in a dry run (``fedgrid check``), the
    one it built in check mode. A `label` site has no executor outside its workflow (in one, the
    site runtime takes the workflow's executor itself: flow/rounds/sites.py)."""
    spec: Spec = site.executor
    if spec.label is not None:
        if dry_run and spec._seen is not None:
            return spec._seen
        raise SpecError("label", f"executor {spec.label!r} is a Parsl workflow's: run this job from the program "
                        "that loaded it, with fedgrid.submit(job) or fedgrid.run(job, dfk=...)")
    if dry_run:
        if spec._seen is None:
            spec.resolve(site.name)
        return spec._seen
    ex = make(str(spec.factory), site.name)
    spec.bind(ex, shown=False)
    pin_blocks(ex, spec.known)
    return ex


def pin_blocks(ex: Any, t: Traits) -> None:
    """A fixed LocalProvider keeps its blocks (min_blocks = init_blocks): when another site makes
    the run use Parsl's scaling strategy, an idle round must not scale the site's only pool in."""
    provider = getattr(ex, "provider", None)
    if not t.scales and provider is not None:
        provider.min_blocks = max(provider.min_blocks, provider.init_blocks)


def describe(site: Any) -> str:
    spec: Spec = site.executor
    source = f"from {spec.factory}" if spec.factory else f"the workflow's executor {spec.label!r}"
    if spec._traits is None:
        return f"{source}, read when the job is submitted into its workflow (fedgrid.submit)"
    return f"Parsl {spec.known.executor} {source}: {spec.known.summary()}"
