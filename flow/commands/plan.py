"""`fedgrid check`: validate a job and print its plan without starting anything.

Everything a run would decide before round 1 is decided here the same way: the model is built (so
its size is known), the transfer plan is made (inline or by reference, per site), the store is
probed, and every site's Parsl executor is constructed with ``dry_run`` — providers, launchers and
optional packages included — then thrown away. What fails here would have failed in the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedgrid.flow.config import ConfigError, Job
from fedgrid.flow.config.views import strategy_of


def describe_model(job: Job) -> tuple[str, int]:
    """One line on the job's model and its parameter bytes, built as a run would build it: the
    built-in model from the data's shapes, or the job's client's init_params()."""
    from fedgrid.apps import datasets
    from fedgrid.apps.models import build

    if job.client is not None:
        from fedgrid.flow.rounds.prepare import build_model

        params = build_model(job).params
        nbytes = int(sum(a.nbytes for a in params.values()))
        count = sum(int(a.size) for a in params.values())
        source = "client.initial" if job.client.initial else "init_params()"
        return (f"client {job.client.code}: {count:,} params in {len(params)} tensors ({nbytes / 2**20:.2f} MB) "
                f"from its {source}{_personal(job, params, None)}"), nbytes
    d = job.data.model_dump()
    test = datasets.load_test(d, job.seed) if job.data.dataset == "parquet" and job.data.test_path else None
    shape, classes = datasets.meta(d, test)
    model = build(job.model.name, shape, classes, job.model.kwargs)
    nbytes = int(sum(math.prod(p.shape) * p.element_size() for p in model.state_dict().values()))
    return (f"model {job.model.name}: input {list(shape)}, {classes} classes, {nbytes // 4:,} params "
            f"({nbytes / 2**20:.2f} MB){_personal(job, model.state_dict(), model)}"), nbytes


def _personal(job: Job, params: Any, model: Any) -> str:
    """What stays at the clients, resolved as a run resolves it: a pattern matching nothing is an
    error here, before any site starts."""
    from fedgrid.flow.clients.personal import names

    if not (found := names(job, params, model)):
        return ""
    more = ", ..." if len(found) > 4 else ""
    return f"; personal (kept at each client): {len(found)} tensors ({', '.join(found[:4])}{more})"


def dry_build(site: Any, run_dir: Path) -> Any:
    """Construct a site's executor as a run would, and release it; returns it for inspection."""
    from fedgrid.executors import build_executor, kind_module
    from fedgrid.executors.common import Disposable

    ex = build_executor(site, run_dir, dry_run=True)
    if isinstance(kind := kind_module(site.executor.kind), Disposable):
        kind.dispose(ex)
    return ex


def try_build(site: Any, run_dir: Path) -> tuple[Any, str | None]:
    """(executor, None), or (None, why) when the site's provider cannot be set up from this machine.

    A missing kubeconfig or AWS credentials on the machine where `check` runs is reported, not
    fatal: a job is often checked on a laptop and run from a login node that has them. A missing
    package (:class:`MissingExtra`) and a bad option are still errors.
    """
    from fedgrid.executors import MissingExtra

    try:
        return dry_build(site, run_dir), None
    except MissingExtra:
        raise
    except Exception as e:  # noqa: BLE001 - provider constructors raise their own types (kube, boto, parsl)
        return None, f"{type(e).__name__}: {e}".strip()


def _data(job: Job, data: dict[str, Any]) -> str:
    """Where a job's training data comes from, in words."""
    from fedgrid.apps import datasets

    if job.client is not None and job.client.flower:
        return "read by the Flower app itself (node_config partition-id of num-partitions = data.clients)"
    return datasets.describe(data)


def block_script(site: Any, ex: Any) -> str | None:
    """The job script each block of a batch site is submitted with (an HTEX whose blocks are
    batch jobs: the slurm and pbs kinds, or a `parsl` site's own SlurmProvider or PBSProProvider)."""
    from fedgrid.executors import workers_per_node
    from fedgrid.executors.hpc import batch_script

    if site.executor.scheduler() is None or not isinstance(getattr(ex, "launch_cmd", None), str):
        return None
    return batch_script(ex, workers_per_node(site.executor) or 1)


def print_plan(job: Job, file: str | Path, base: Path) -> list[str]:
    """Print the plan; returns warnings (sites whose provider could not be set up from here)."""
    from fedgrid.executors import describe
    from fedgrid.flow.persist import dataplane
    from fedgrid.flow.persist.runlock import share_gid

    run_dir = job.run_dir(base)
    if job.checkpoint.share_group:  # a group the run could not give its directory fails here, as in a run
        share_gid(job.checkpoint.share_group, file)
    try:
        line, nbytes = describe_model(job)
    except ConfigError as e:  # found once the model is built: name the job file
        raise ConfigError(str(file) if e.file == "<job>" else e.file, e.key, e.expected) from None
    mb = nbytes / 2**20
    opts = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in strategy_of(job).model_dump(exclude={"name"}).items() if v is not None)
    print(f"job {job.name}: {job.rounds} rounds, seed {job.seed}, strategy {strategy_of(job).name}"
          + (f" ({opts})" if opts else ""))
    print(line)
    print(f"data: {_data(job, job.data.model_dump())}, {job.data.clients} clients; "
          f"training rows are read only at their site")
    per_round = job.clients_per_round()
    print(f"rounds: {per_round} of {job.data.clients} clients per round, quorum {job.round.min_clients}, "
          f"deadline {job.round.deadline_s:g} s, {job.round.retries} retr{'y' if job.round.retries == 1 else 'ies'}")
    if job.round.aggregate == "site":
        print(f"aggregation: at each site first (round.aggregate: site): an aggregation app per site sends "
              f"one partial per round; site deadline {job.round.site_deadline_fraction * job.round.deadline_s:g} s")
    tp = dataplane.plan(job, nbytes, run_dir, file)
    if tp.store_url and job.store.url:
        dataplane.check_store(tp.store_url, file)
        print(f"store probed: {tp.store_url} is writable and readable from here")
    kept = job.client_state()
    store = tp.store_url or (dataplane.store_url(job.store.url or str(run_dir / "store")) if kept else None)
    print(f"params: {mb:.2f} MB down and up per client per round ({2 * mb * per_round:.1f} MB a round)"
          + (f"; store {store}" if store else "; no store needed")
          + (f" ({kept[0]})" if kept and not tp.store_url else ""))
    sites = job.client_sites()
    warnings = []
    print("sites:")
    for s in job.sites:
        ex, why = try_build(s, run_dir)
        ids = [i for i, n in enumerate(sites) if n == s.name]
        how = "by reference" if tp.by_ref[s.name] else "inline"
        built = "not buildable here"
        if ex is not None:
            prov = getattr(ex, "provider", None)
            built = type(ex).__name__ + (f" + {type(prov).__name__}" if prov is not None else "")
        kind = s.executor.kind
        print(f"  {s.name}: {kind} -> {built}; {describe(s)}")
        data = _data(job, job.site_data(s.name).model_dump())
        print(f"    clients {ids[0]}..{ids[-1]} ({len(ids)}); data {data}")
        print(f"    params travel {how} ({tp.why[s.name]})")
        if job.round.aggregate == "site":
            print(f"    updates stay in {s.store or 'the run store'}; one partial per round to the driver")
        if ex is not None and (script := block_script(s, ex)):
            print("    batch script of each block:")
            for line in script.strip().splitlines():
                print(f"      | {line}")
        if why:
            warnings.append(f"site {s.name!r} ({kind}): a run from this machine would fail: {why}")
    print(f"checkpoints: {run_dir}" + (f" (read-only for group {job.checkpoint.share_group})"
                                       if job.checkpoint.share_group else " (owner-only)"))
    for w in warnings:
        print(f"warning: {w}")
    return warnings
