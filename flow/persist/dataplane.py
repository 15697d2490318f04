"""How params travel to each site and back: inline in the task, or by reference through a Store.

Decided once per run from the model's size and each site's kind, before any executor is used, so
a job that cannot work (a Globus Compute site with a model over the service's 10 MB limit and no
store, or a remote site with no store it can reach) fails at `fedgrid check`, not in round 7.

Rules: ``store.mode: never`` sends everything inline; ``always`` sends everything by reference;
``auto`` (default) sends by reference to a site when the params exceed that site's inline limit —
``store.inline_max_mb``, and for ``globus_compute`` sites also the service's payload limit less the
serializer's overhead. Updates come back the same way the params went. Without ``store.url`` the
store defaults to ``<run_dir>/store``, which only sites on this machine can reach.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from fedgrid.flow.config import ConfigError, Job, SiteSpec


@dataclass
class TransferPlan:
    params_bytes: int
    store_url: str | None = None
    by_ref: dict[str, bool] = field(default_factory=dict)  # site -> params travel by reference
    ref_above: dict[str, int | None] = field(default_factory=dict)  # site -> update bytes that go by ref
    why: dict[str, str] = field(default_factory=dict)

    def any_ref(self) -> bool:
        return any(self.by_ref.values())


def site_limit(job: Job, site: SiteSpec) -> int:
    """Params bytes that may ride inline to `site`: the job's limit, or less where the site kind
    caps its payloads (once its serializer has inflated them)."""
    limit = int(job.store.inline_max_mb * 2**20)
    ex = site.executor
    if ex.payload_limit is not None:
        limit = min(limit, int(ex.payload_limit / ex.payload_overhead))
    return limit


def plan(job: Job, params_bytes: int, run_dir: Path, file: str | Path = "<job>") -> TransferPlan:
    st = job.store
    out = TransferPlan(params_bytes)
    mb = params_bytes / 2**20
    for s in job.sites:
        limit = site_limit(job, s)
        if st.mode == "always":
            ref, why = True, "store.mode is always"
        elif st.mode == "never":
            ref, why = False, "store.mode is never"
            ex = s.executor
            cap, over = ex.payload_limit, ex.payload_overhead
            if cap is not None and params_bytes * over > cap:
                raise ConfigError(file, "store.mode", f"is never, but the model's params are {mb:.1f} MB and "
                                  f"site {s.name!r} ({ex.kind}) accepts at most "
                                  f"{cap / 2**20:.0f} MB per task and per result (about "
                                  f"{cap / over / 2**20:.1f} MB of params once serialized); "
                                  f"expected store.mode auto or always with a store the site can reach")
        else:
            ref = params_bytes > limit
            why = f"{mb:.1f} MB {'>' if ref else '<='} inline limit {limit / 2**20:.1f} MB"
        out.by_ref[s.name] = ref
        out.ref_above[s.name] = (0 if st.mode == "always" else limit) if st.mode != "never" else None
        out.why[s.name] = why
    needs_store = [s for s in job.sites if out.by_ref[s.name]]
    if needs_store:
        if st.url:
            out.store_url = store_url(st.url)
        else:
            remote = [s.name for s in needs_store if not s.executor.runs_here()]
            if remote:
                raise ConfigError(file, "store.url", f"site(s) {remote} get the params ({mb:.1f} MB) by reference "
                                  "but no store.url is set; expected a directory every site can reach (shared "
                                  "filesystem) or an fsspec URL such as s3://bucket/fedgrid")
            out.store_url = str(run_dir / "store")
    return out


def store_url(url: str) -> str:
    """A local store path made absolute (``~`` expanded): refs carry it to sites whose working
    directory is not the driver's (Globus Compute workers, batch jobs, pods)."""
    if "://" in url and not url.startswith("file://"):
        return url
    return str(Path(url.removeprefix("file://")).expanduser().resolve())


def run_area(url: str, job: Job, run_dir: Path) -> str:
    """This run's own folder in the store: two runs of one job name (other users, other run dirs)
    never share objects, and each clears out only its own leftovers."""
    tag = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return f"{url.rstrip('/')}/{job.name}-{tag}"


def check_store(url: str, file: str | Path = "<job>") -> None:
    """Prove the store is writable and readable from the driver (sites verify what they read)."""
    from fedgrid.apps.store import Store

    try:
        Store(url).probe()
    except Exception as e:  # noqa: BLE001 - fsspec backends raise their own types (e.g. read-only http)
        raise ConfigError(file, "store.url", f"store {url!r} is not usable from the driver: "
                          f"{type(e).__name__}: {e or 'this filesystem cannot write'}") from None
