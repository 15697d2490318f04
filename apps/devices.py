"""Which device a client trains on at its site: ``ctx.device``, ``"cuda:0"`` or ``"cpu"``.

Decided once per process (a worker keeps its GPU for life) from its environment:

- ``train.device: cpu`` in the job: never a GPU.
- The site's pin (:mod:`fedgrid.executors.gpus`): Parsl exported it as CUDA_VISIBLE_DEVICES when
  the worker started, except where its own GPU sharing rewrote it; fedgrid's pool also carries
  every pin in FEDGRID_GPUS, so the worker restores its own (:func:`restore_pin`) before any
  client code runs: a client module that asks torch about CUDA at import would otherwise fix the
  wrong GPU for the process's life.
- Otherwise whatever CUDA_VISIBLE_DEVICES says (a batch system's, the user's), or every GPU of the
  node when it is unset.
- torch must see a CUDA device there (``torch.cuda.is_available()``); a pinned worker whose torch
  sees none (a CPU-only build, no driver) trains on the CPU, and the reason is logged.

The pinned GPU (or the first of several) is ``cuda:0`` inside the worker: CUDA numbers the visible
devices from 0. A worker on a node with no GPU device file at all never imports torch to find
that out, so a client that does not use torch does not pay for its import.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PINS_VAR = "FEDGRID_GPUS"  # every worker's pin, space-separated, in worker order (executors/gpus.export)
RANK_VAR = "PARSL_WORKER_RANK"  # this worker's index in its pool, set by Parsl's worker
VISIBLE_VAR = "CUDA_VISIBLE_DEVICES"
# what a node with a GPU has: the NVIDIA driver's control file, WSL2's GPU, ROCm's kernel driver
GPU_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
_HIDDEN = ("", "-1", "none", "NoDevFiles")  # CUDA_VISIBLE_DEVICES values that show no GPU


@dataclass(frozen=True)
class Placement:
    """The device a process computes on, and why (for the worker's log and `fedgrid` messages)."""

    device: str  # "cuda:0" or "cpu"
    reason: str
    pinned: bool = False  # the site pinned a GPU (or CUDA_VISIBLE_DEVICES named one): cpu is a fallback


def own_pin(env: Mapping[str, str]) -> str | None:
    """This worker's pin: its entry of FEDGRID_GPUS by its Parsl worker rank; None outside a
    fedgrid GPU pool (a CPU site, the driver, a `parsl` site's own executor)."""
    pins, rank = env.get(PINS_VAR, "").split(), env.get(RANK_VAR, "")
    return pins[int(rank)] if rank.isdigit() and int(rank) < len(pins) else None


def restore_pin(env: MutableMapping[str, str] | None = None) -> str | None:
    """Set CUDA_VISIBLE_DEVICES to this worker's pin where Parsl rewrote it; returns the pin. Must
    run before CUDA starts in the process (it reads the variable once)."""
    env = os.environ if env is None else env
    pin = own_pin(env)
    if pin is not None and env.get(VISIBLE_VAR) != pin:
        log.info("%s=%s restored to this worker's pin %s", VISIBLE_VAR, env.get(VISIBLE_VAR), pin)
        env[VISIBLE_VAR] = pin
    return pin


def decide(setting: str, env: Mapping[str, str], cuda_devices: Callable[[], int],
           gpu_node: Callable[[], bool]) -> Placement:
    """The device for `setting` (train.device) in a process with environment `env`;
    `cuda_devices()` counts the CUDA devices torch sees (ImportError: no torch), `gpu_node()` says
    whether the node may have a GPU at all. Pure but for those two, so every branch is testable
    on a machine without a GPU."""
    if setting == "cpu":
        return Placement("cpu", "train.device is cpu")
    visible, where = env.get(VISIBLE_VAR), _where(env)
    named = visible is not None and visible.strip() not in _HIDDEN
    if visible is not None and not named:
        return Placement("cpu", f"{where}: no GPU visible")
    if not named and not gpu_node():
        return Placement("cpu", "no GPU on this node")
    try:
        n = cuda_devices()
    except ImportError:
        return Placement("cpu", f"{where}, but torch is not installed", pinned=named)
    if n == 0:
        return Placement("cpu", f"{where}, but torch sees no CUDA device (a CPU-only torch build, or no driver)",
                         pinned=named)
    return Placement("cuda:0", f"{where}; torch sees {n} CUDA device(s)", pinned=named)


def _where(env: Mapping[str, str]) -> str:
    """Which GPU the environment gives this process, in words for the reason."""
    if (pin := own_pin(env)) is not None:
        return f"GPU {pin} (pinned by the site's gpus)"
    visible = env.get(VISIBLE_VAR)
    return f"{VISIBLE_VAR} unset" if visible is None else f"{VISIBLE_VAR}={visible}"


def torch_cuda_devices() -> int:
    """CUDA devices torch sees (imports torch; ImportError when it is not installed)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_node() -> bool:
    """Whether this node may have a GPU: a GPU device file exists, or the question is cheap
    (torch already imported) or not answerable from /dev (not Linux)."""
    return "torch" in sys.modules or not sys.platform.startswith("linux") or any(map(os.path.exists, GPU_FILES))


@functools.cache
def placement(setting: str = "auto") -> Placement:
    """This process's device for `setting` (train.device), decided once; the reason is logged,
    as a warning when a GPU was meant (pinned or named) but the client gets the CPU."""
    restore_pin()
    p = decide(setting, os.environ, torch_cuda_devices, gpu_node)
    (log.warning if p.pinned and p.device == "cpu" else log.info)("device %s: %s", p.device, p.reason)
    return p


def device(setting: str = "auto") -> str:
    """``ctx.device`` for a client of this process (see the module's docstring)."""
    return placement(setting).device


def model_device(model: Any) -> Any:
    """Where a torch module's weights are (a ``torch.device``; the CPU for a module without any)."""
    import torch

    return next((p.device for p in model.parameters()), torch.device("cpu"))


def on(device: Any, *tensors: Any) -> tuple:
    """The tensors on `device`: the same tensors where they are there already (the CPU case costs
    nothing); a copy that need not be waited for where the source is pinned host memory."""
    return tuple(t.to(device, non_blocking=True) for t in tensors)
