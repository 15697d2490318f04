"""GPU placement for the HTEX kinds: which GPU(s) each worker of a node is pinned to.

A site names the GPUs of a node (``gpus`` on ``htex``: a count or device ids; ``gpus_per_node``
on the remote kinds: the count each node gets from its scheduler or cloud) and how they are
shared out among the node's workers: ``workers_per_gpu`` workers on each GPU (a small model
leaves most of a GPU idle, so several clients train on one at once), or ``gpus_per_worker`` GPUs
held by each worker (a client whose model needs several). The result is one *pin* per worker, in
worker order: ``0 0 1 1`` for two GPUs shared by two workers each, ``0,1 2,3`` for four GPUs two
to a worker. A device id listed twice in ``gpus`` is also a GPU shared by two workers.

Parsl does the pinning (HighThroughputExecutor's ``available_accelerators``): worker i of a pool
gets the i-th name as its CUDA_VISIBLE_DEVICES (and ROCR_VISIBLE_DEVICES, ZE_AFFINITY_MASK), and
a pool starts no more workers than there are names. One exception: where ``nvidia-smi`` lists the
node's N GPUs and a pool runs at least 2N workers, Parsl's worker rewrites an integer name ``k``
to ``k // (workers // N)``, its own way of sharing GPUs, made for names ``0..workers-1``.
fedgrid's names are device ids already, so the pool also gets every pin in FEDGRID_GPUS (exported
by its launch command) and each worker restores its own before any client code runs
(:mod:`fedgrid.apps.devices`).
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, Field

from fedgrid.apps.devices import PINS_VAR
from fedgrid.executors.common import SpecError

PosInt = Annotated[int, Field(ge=1)]
# a device id: an index, or a UUID such as GPU-5e3a... / MIG-...; no spaces (Parsl passes the names
# on the pool's command line) and no commas (a comma-separated name is several GPUs)
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][\w.:/-]*$")


def _gpus(v: Any) -> Any:
    """``gpus`` as a count or a list of device ids, with one message for everything else (rather
    than pydantic's one per member of the union)."""
    def device_id(x: Any) -> bool:
        if isinstance(x, int) and not isinstance(x, bool):
            return x >= 0
        return isinstance(x, str) and bool(_DEVICE_ID.match(x))

    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return v
    if isinstance(v, list) and all(map(device_id, v)):
        return v
    raise ValueError(f"expected a GPU count or a list of device ids (0, 1, ... or GPU-/MIG- UUIDs), got {v!r}")


Gpus = Annotated[int | list[int | str] | None, BeforeValidator(_gpus)]


class GpuSharing(BaseModel):
    """How a node's GPUs are shared out among its workers; mixed into a kind's Spec, which says
    where the node's GPUs come from (``gpu_ids``) and under which option (``GPUS_KEY``)."""

    workers_per_gpu: PosInt = Field(1, description=(
        "Workers (clients training at once) on each GPU: a small model leaves most of a GPU idle. Workers "
        "are laid out in blocks: with 2 per GPU, workers 0-1 on the first GPU, 2-3 on the next."))
    gpus_per_worker: PosInt = Field(1, description=(
        "GPUs each worker holds (`CUDA_VISIBLE_DEVICES=0,1`), for a client whose model needs several; the "
        "GPUs must split evenly. Not together with `workers_per_gpu`."))

    GPUS_KEY: ClassVar[str] = "gpus"

    def gpu_ids(self) -> list[str]:
        """The node's GPUs, as device ids; empty for a CPU site."""
        raise NotImplementedError

    def pins(self) -> list[str]:
        """One pin per worker, in worker order (empty: no GPUs); a :class:`SpecError` names the
        option that cannot work."""
        return pins(self.gpu_ids(), self.workers_per_gpu, self.gpus_per_worker, self.GPUS_KEY)


def pins(ids: list[str], workers_per_gpu: int = 1, gpus_per_worker: int = 1, key: str = "gpus") -> list[str]:
    """Each worker's GPU(s): every id `workers_per_gpu` times, or the ids in groups of
    `gpus_per_worker` (``"0,1"``: a worker that sees both). `key` names the GPUs' option in errors."""
    if not ids:
        for option, n in (("workers_per_gpu", workers_per_gpu), ("gpus_per_worker", gpus_per_worker)):
            if n > 1:
                raise SpecError(option, f"shares out the site's GPUs, but {key} names none")
        return []
    if workers_per_gpu > 1 and gpus_per_worker > 1:
        raise SpecError("gpus_per_worker", "give workers_per_gpu (workers sharing a GPU) or gpus_per_worker "
                                           "(GPUs each worker holds), not both")
    if gpus_per_worker == 1:
        return [i for i in ids for _ in range(workers_per_gpu)]
    if twice := sorted({i for i in ids if ids.count(i) > 1}):
        raise SpecError(key, f"lists GPU(s) {', '.join(twice)} more than once; with gpus_per_worker each worker "
                             "holds GPUs of its own")
    if len(ids) % gpus_per_worker:
        raise SpecError("gpus_per_worker", f"{len(ids)} GPU(s) ({key}) do not split into groups of {gpus_per_worker}")
    return [",".join(ids[i:i + gpus_per_worker]) for i in range(0, len(ids), gpus_per_worker)]


def export(pins: list[str]) -> str:
    """The shell words put before a pool's launch command so that its workers know fedgrid's pins
    (``export FEDGRID_GPUS='0 0 1 1' && ``); nothing for a CPU site, whose command stays Parsl's."""
    return f"export {PINS_VAR}={shlex.quote(' '.join(pins))} && " if pins else ""


def placement(pins: list[str]) -> str:
    """`fedgrid check`'s words for the pins: ``GPU 0: workers 0-1; GPU 1: workers 2-3``."""
    workers: dict[str, list[int]] = {}
    for w, pin in enumerate(pins):
        workers.setdefault(pin, []).append(w)
    return "; ".join(f"GPU{'s' if ',' in pin else ''} {pin}: worker{'s' if len(ws) > 1 else ''} {spans(ws)}"
                     for pin, ws in workers.items())


def spans(ns: list[int]) -> str:
    """Sorted integers as runs: ``[0, 1, 2, 5]`` -> ``0-2,5``."""
    runs: list[list[int]] = []
    for n in ns:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
