"""Files written whole or not at all: a crash (power, SIGKILL, a full disk) leaves the old file or
the new one, never a torn one.

The driver writes its round checkpoints, the rounds table's parts and ``sites.json`` this way
(flow/persist), and ``fedgrid partition`` its client shards (apps/shards.py). It lives in `apps/`
so that site code can use it too: `apps/` imports nothing of the driver (`flow/`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(d: Path) -> None:
    """Make a rename in `d` durable (the directory entry, not only the file's data)."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[..., object]) -> None:
    """Write via `write(tmp)` (a path beside `path`), fsync, rename over `path`, fsync the
    directory. The temp name starts with a dot, so dataset readers skip an unfinished one.
    (`write` may take more parameters with defaults: callers bind loop values that way.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
