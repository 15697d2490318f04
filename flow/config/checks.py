"""Rules that span blocks of a job, which pydantic cannot express field by field: sites against
clients, a quorum against the client count, data paths, the model factory, the strategy against
the rest of the job (what the strategy and the site kinds declare about themselves), faults.

Each raises :class:`ConfigError` naming the key to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedgrid.executors.common import SpecError
from fedgrid.flow.config.errors import ConfigError
from fedgrid.flow.config.schema import Job
from fedgrid.flow.config.views import strategy_of
from fedgrid.flow.strategies import STRATEGIES, mean_based
from fedgrid.flow.strategies.base import Strategy


def check_consistency(job: Job, file: str | Path) -> None:
    names = [s.name for s in job.sites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(file, "sites", f"site names must be unique, {dup} repeated")
    if not job.sites:
        raise ConfigError(file, "sites", "at least one site is required")
    # clients: sites without a count share what is left evenly
    given = sum(s.clients or 0 for s in job.sites)
    open_sites = [s for s in job.sites if s.clients is None]
    if open_sites:
        rest = job.data.clients - given
        if rest < len(open_sites):
            raise ConfigError(file, "sites", f"data.clients ({job.data.clients}) leaves {rest} client(s) "
                              f"for {len(open_sites)} site(s) without a clients count")
        for i, s in enumerate(open_sites):
            s.clients = rest // len(open_sites) + (1 if i < rest % len(open_sites) else 0)
    elif given != job.data.clients:
        raise ConfigError(file, "sites", f"site clients add up to {given}, expected data.clients "
                          f"({job.data.clients})")
    if job.round.min_clients > job.data.clients:
        raise ConfigError(file, "round.min_clients", f"must be <= data.clients ({job.data.clients}), "
                          f"got {job.round.min_clients}")
    _check_sites(job, file)
    _check_data(job, file)
    _check_model(job, file)
    _check_client(job, file)
    _check_strategy(job, file)
    _check_faults(job, file)


def _check_sites(job: Job, file: str | Path) -> None:
    """Each site's kind reads what it will build before any check below reads its capabilities. A
    `parsl` site calls its factory, which may live beside the job's client code:
    ``client.python_path`` goes on sys.path first."""
    if job.client is not None and job.client.python_path:
        from fedgrid.apps.train import use_python_path

        use_python_path(job.client.python_path)
    for i, site in enumerate(job.sites):
        try:
            site.executor.resolve(site.name)
        except SpecError as e:
            raise site_error(file, i, e) from None


def _strategy(job: Job) -> type[Strategy]:
    return STRATEGIES[strategy_of(job).name]


def site_error(file: str | Path, i: int, e: SpecError) -> ConfigError:
    """A site kind's SpecError as the one-line ConfigError naming the key to change."""
    return ConfigError(file, f"sites.{i}.executor.{e.field}", e.why)


def _check_faults(job: Job, file: str | Path) -> None:
    names = {s.name: s for s in job.sites}
    for i, f in enumerate(job.faults):
        key = f"faults.{i}"
        if f.site is not None and f.site not in names:
            raise ConfigError(file, f"{key}.site", f"no site named {f.site!r}; sites: {', '.join(names)}")
        if f.clients and (bad := [c for c in f.clients if not 0 <= c < job.data.clients]):
            raise ConfigError(file, f"{key}.clients", f"client ids run 0..{job.data.clients - 1}, got {bad}")
        if f.lost_from is not None and f.site is None:
            raise ConfigError(file, f"{key}.lost_from", "a lost site needs `site`")
        if f.lost_until is not None and (f.lost_from is None or f.lost_until <= f.lost_from):
            raise ConfigError(file, f"{key}.lost_until", "must come after lost_from")
        hit = {s for c, s in enumerate(job.client_sites()) if f.hits(c, s)}
        local = sorted(s for s in hit if names[s].executor.in_driver)
        if (f.kill_worker_at or f.lost_from) and local:
            raise ConfigError(file, f"{key}", f"killing workers needs worker processes; site(s) {local} are "
                              "`local` threads in the driver (use htex)")


def _check_strategy(job: Job, file: str | Path) -> None:
    _strategy(job).derive(job.strategy, job)
    remote = [s.name for s in job.sites if not s.executor.runs_here()]
    if (keepers := job.client_state()) and remote and not job.store.url:
        raise ConfigError(file, "store.url", f"{' and '.join(keepers)} in the store, and sites {remote} run "
                          f"elsewhere: set store.url to a location every site can reach (a shared path or s3://...)")
    if job.compression.up_codec() != "none" and job.round.late == "carry":
        raise ConfigError(file, "round.late", "a compressed update is a delta from its round's model, which a "
                          "carried late update no longer has: use round.late: drop with compression")
    _check_privacy(job, file)
    _check_secagg(job, file)
    _check_site_aggregation(job, file)
    _check_tracking(job, file)
    if (problem := _strategy(job).check_job(job)) is not None:
        raise ConfigError(file, *problem)
    if job.personal is not None and job.personal.layers and "scaffold" in _strategy(job).needs:
        raise ConfigError(file, "personal.layers", f"strategy {strategy_of(job).name}'s control variates would "
                          "carry the personal layers' drift to the server and into every client's steps; use personal "
                          "layers with another strategy (fedavg, fedprox, ...)")


def _check_privacy(job: Job, file: str | Path) -> None:
    if job.privacy is None:
        return
    if not _strategy(job).mean_based:
        raise ConfigError(file, "privacy", f"DP-FedAvg noises the clients' mean; strategy {strategy_of(job).name} "
                          f"does not take one. Expected one of {', '.join(mean_based())}")
    if job.round.absent == "reuse":
        raise ConfigError(file, "round.absent", "a reused update would be counted again without being "
                          "accounted for: use round.absent: drop with privacy")
    if job.round.select != "random":
        raise ConfigError(file, "round.select", "the accountant assumes clients sampled uniformly at random; "
                          f"round.select: {job.round.select} picks them by speed. Expected random with privacy")


def _check_tracking(job: Job, file: str | Path) -> None:
    """A tracker's package is an extra: say so before any site starts."""
    import importlib.util

    t = job.tracking
    for key, module, wanted in (("tracking.mlflow", "mlflow", t is not None and t.mlflow is not None),
                                ("tracking.tensorboard", "tensorboard", t is not None and t.tensorboard)):
        if wanted and importlib.util.find_spec(module) is None:
            raise ConfigError(file, key, f"needs the {module} package: pip install 'fedgrid[tracking]'")


def _check_site_aggregation(job: Job, file: str | Path) -> None:
    """What round.aggregate: site does not do: rules that need every update (median, trimmed mean,
    Krum), the asynchronous loop, and the features that act on individual updates at the driver."""
    if job.round.aggregate != "site":
        return
    cls = _strategy(job)
    why = ("strategy" if cls.site_weights() is None else
           "compression.up" if job.compression.up_codec() != "none" else
           "round.late" if job.round.late == "carry" else
           "round.absent" if job.round.absent == "reuse" else None)
    if why:
        able = [n for n, c in STRATEGIES.items() if c.site_weights() is not None]
        raise ConfigError(file, why, "round.aggregate: site combines one partial per site, so it works with the "
                          f"strategies that are sums over clients ({', '.join(able)}) in synchronous rounds, "
                          "without update compression, carried or reused updates; use round.aggregate: flat for "
                          "the others")
    remote = [s.name for s in job.sites if not s.executor.runs_here() and not s.store]
    if remote and not job.store.url:
        raise ConfigError(file, f"sites[{remote[0]}].store", "round.aggregate: site keeps the clients' updates in a "
                          "store their site's aggregator reads: set the site's store (a path on its cluster) or "
                          "store.url")


def _check_secagg(job: Job, file: str | Path) -> None:
    if job.secagg is None:
        return
    why = ("strategy" if not _strategy(job).mean_based else
           "compression.up" if job.compression.up != "none" else
           "privacy.mode" if job.privacy is not None and job.privacy.mode == "central" else
           "round.max_update_norm" if job.round.max_update_norm is not None else
           "round.late" if job.round.late == "carry" else
           "round.absent" if job.round.absent == "reuse" else None)
    if why:
        raise ConfigError(file, why, "secure aggregation shows the driver only the sum of the updates, so it "
                          f"works with {', '.join(mean_based())}, without update compression, central DP, a "
                          "norm bound, carried or reused updates (local DP is fine)")


def _check_data(job: Job, file: str | Path) -> None:
    for site in job.sites:
        d = job.site_data(site.name)
        pre = "data" if not site.data else f"sites.{site.name}.data"
        if not site.executor.runs_here():  # its paths are on the site's filesystem; the site checks them
            if d.dataset == "parquet" and not d.path:
                raise ConfigError(file, f"{pre}.path", "dataset 'parquet' needs a path (a file, or a "
                                  "template with {client})")
            continue
        if d.dataset == "fashion_mnist":
            from fedgrid.apps.datasets import FMNIST_DEFAULT_ROOT, fashion_mnist_missing

            missing = fashion_mnist_missing(d.root or FMNIST_DEFAULT_ROOT)
            if missing:
                raise ConfigError(file, f"{pre}.root", missing)
        if d.dataset == "parquet":
            if not d.path:
                raise ConfigError(file, f"{pre}.path", "dataset 'parquet' needs a path (a file, or a "
                                  "template with {client})")
            per_client = "{client" in d.path
            if per_client and d.partition.kind not in ("none", "iid"):
                raise ConfigError(file, f"{pre}.partition.kind", "per-client files ({client} in path) "
                                  f"are already partitioned; expected 'none', got {d.partition.kind!r}")
            paths = ([d.path.format(client=c) for c, s in enumerate(job.client_sites()) if s == site.name]
                     if per_client else [d.path])
            for pth in paths:
                if not Path(pth).is_file():
                    raise ConfigError(file, f"{pre}.path", f"parquet file not found: {pth}")
        # (custom data: the client hands its own groups to ctx.split)
        if d.partition.kind == "natural" and not d.partition.column and d.dataset != "custom":
            raise ConfigError(file, f"{pre}.partition.column", "partition kind 'natural' needs a column")
    d = job.data
    if d.dataset == "parquet" and d.test_path and not Path(d.test_path).is_file():
        raise ConfigError(file, "data.test_path", f"parquet file not found: {d.test_path}")


def strategy_advice(job: Job) -> list[tuple[str, str]]:
    """The strategy's warnings about this job: (key, why and what to set), printed by `fedgrid check`
    and at the start of `fedgrid run`; they never stop a run."""
    return _strategy(job).advice(job)


def import_path(file: str | Path, key: str, path: str, what: str) -> Any:
    """The object a ``package.module:name`` path names, or a ConfigError of one line saying why not
    (the module is missing or fails to import, or has no such name)."""
    import importlib

    mod, _, attr = path.partition(":")
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises on import is reported in one line
        raise ConfigError(file, key, f"cannot import module {mod!r}: {type(e).__name__}: {e}") from None
    obj = getattr(m, attr, None)
    if obj is None or not callable(obj):
        raise ConfigError(file, key, f"module {mod!r} has no {what} {attr!r}")
    return obj


def _check_model(job: Job, file: str | Path) -> None:
    name = job.model.name
    from fedgrid.apps.models import BUILTIN, factory_arguments

    if job.client is not None or name in BUILTIN:
        return
    if ":" not in name:
        raise ConfigError(file, "model", f"expected one of {sorted(BUILTIN)} or 'package.module:factory', "
                          f"got {name!r}")
    factory = import_path(file, "model", name, "callable")
    try:
        factory_arguments(factory, (1,), 2, job.model.kwargs)
    except TypeError as e:
        raise ConfigError(file, "model", f"{name} cannot be called as the model factory: {e}") from None


def _check_federated(job: Job, file: str | Path, cls: Any) -> None:
    """Federated evaluation needs clients that can evaluate, and rounds to evaluate after."""
    if not job.round.federated_every:
        return
    if _strategy(job).asynchronous:
        raise ConfigError(file, "round.federated_every", f"federated evaluation follows a synchronous round; "
                          f"strategy {strategy_of(job).name} has none (expected 0)")
    if cls is None and not job.data.holdout:
        raise ConfigError(file, "data.holdout", "federated evaluation with the built-in client evaluates on the "
                          "share of each client's rows it holds out; expected a value in (0, 1), e.g. 0.2")
    from fedgrid.apps.client import Client

    if cls is not None and (not callable(getattr(cls, "evaluate", None)) or cls.evaluate is Client.evaluate):
        path = job.client.path if job.client is not None else None  # cls: the job's client class
        raise ConfigError(file, "round.federated_every", f"{path} has no evaluate(params); expected it "
                          "to return fedgrid.client.Evaluation for federated evaluation, or 0 here")


def _check_client(job: Job, file: str | Path) -> None:
    """The client class imports, has the methods fedgrid calls, and honours what the job needs."""
    if job.client is None:
        _check_federated(job, file, None)
        if job.data.dataset == "custom":
            raise ConfigError(file, "data.dataset", "custom means the job's own client code loads its data; expected "
                              "a client block (client: package.module:Class) or a built-in dataset")
        return
    from fedgrid.apps.client import HOOKS, REQUIRED
    from fedgrid.apps.train import use_python_path

    path = job.client.path
    assert path is not None  # set by the schema once validated (a Flower app's: fedgrid's adapter class)
    # the workers import the class from the same directories (apps/train.load_class), so this
    # check and the sites agree; a site on another machine has them on its own disk, not here
    if all(s.executor.runs_here() for s in job.sites) and \
            (missing := [d for d in job.client.python_path if not Path(d).is_dir()]):
        raise ConfigError(file, "client.python_path", f"no directory {missing[0]} (a relative path is relative to "
                          "the job file's folder)")
    use_python_path(job.client.python_path)
    if job.client.flower:
        _check_flower(job, file)
    cls = import_path(file, "client.path", path, "class")
    if not isinstance(cls, type):
        raise ConfigError(file, "client.path", f"{path} is a {type(cls).__name__}, expected a class "
                          "(subclass fedgrid.client.Client)")
    lacking = [m for m in REQUIRED if not callable(getattr(cls, m, None))]
    if lacking:
        raise ConfigError(file, "client.path", f"{path} has no {' or '.join(lacking)}(); expected the methods "
                          f"of fedgrid.client.Client ({', '.join(REQUIRED)}, and evaluate for federated evaluation)")
    needs = set(_strategy(job).needs) | ({"steps"} if job.round.pace == "deadline" else set())
    personal = {"prox": "personal.ditto", "head": "personal.head_epochs"}
    if job.personal is not None:
        needs |= {"prox"} if job.personal.ditto is not None else set()
        needs |= {"head"} if job.personal.head_epochs else set()
    if missing := sorted(needs - set(getattr(cls, "supports", ()) or ())):
        hook = missing[0]
        who = "round.pace: deadline" if hook == "steps" else f"strategy {strategy_of(job).name}" \
            if hook in _strategy(job).needs else personal[hook]
        if job.client.flower:
            raise ConfigError(file, "client.flower", f"{who} needs {hook!r} in the client's training loop, which "
                              "fedgrid cannot add to a Flower app; expected a strategy that needs no client hook "
                              "(fedavg, fedadam, fedyogi, fedadagrad, fedavgm, krum, median, trimmed_mean, ...)")
        raise ConfigError(file, "client.path", f"{path} does not support {hook!r}, which {who} needs: "
                          f"{HOOKS[hook]}; honour it and add {hook!r} to the class's `supports`")
    if not job.client.flower:
        _check_federated(job, file, cls)


def _check_flower(job: Job, file: str | Path) -> None:
    """The Flower app imports (with flwr installed), is a ClientApp fedgrid can drive, and has what
    this job will send it; its initial-model function imports."""
    assert job.client is not None and job.client.flower is not None
    try:
        from fedgrid.apps.flower.app import flwr_imported, refusal

        flwr_imported()
    except ImportError:
        raise ConfigError(file, "client.flower", "Flower apps need flwr installed where the driver and the sites run: "
                          "pip install 'fedgrid[flower]'") from None
    app = import_path(file, "client.flower", job.client.flower, "app")
    if job.client.initial:
        import_path(file, "client.initial", job.client.initial, "function")
    if job.round.federated_every and _strategy(job).asynchronous:
        _check_federated(job, file, None)
    if why := refusal(app, job.client.flower, bool(job.round.federated_every), job.client.initial):
        raise ConfigError(file, *why)
