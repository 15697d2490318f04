"""Datasets as a site sees them: arrays loaded where the data lives, cached per worker process.

Three sources: ``digits`` (ships inside scikit-learn), ``fashion_mnist`` (the four original idx
``.gz`` files, by default from Debian's ``dataset-fashion-mnist``) and ``parquet`` (a site's own
shard, or one file that is partitioned like the built-ins). Everything here is numpy; torch is only
touched in :mod:`fedgrid.apps.train`, so the driver can validate a job without importing it.

The driver only ever calls :func:`load_test`; training rows are read by :func:`client_arrays` inside
the train app at the client's site, which is also where a site's feature skew (``data.skew``) is
applied, so the driver's test set is never skewed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedgrid.apps.memo import Last
from fedgrid.apps.partition import partition

FMNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Per-channel statistics of the training split, so inputs are roughly zero-mean unit-variance.
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


@dataclass(frozen=True)
class Arrays:
    """Features (float32, N x shape) and integer labels, plus what a model needs to know."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


_CACHE: dict[str, Any] = {}


def _cached(key: str, make):  # noqa: ANN001 - small memo used by persistent workers
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _spec_key(kind: str, spec: dict[str, Any]) -> str:
    return kind + ":" + hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def cache_dir() -> Path:
    d = Path(os.environ.get("FEDGRID_CACHE", Path.home() / ".cache" / "fedgrid"))
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- sources --------------------------------------------------------------------------------------


def fashion_mnist_missing(root: str) -> str | None:
    """Why the Fashion-MNIST files cannot be read from `root`, or None when they can."""
    missing = [f for pair in FMNIST_FILES.values() for f in pair if not (Path(root) / f).is_file()]
    if not missing:
        return None
    return (f"Fashion-MNIST files not found in {root} (missing {', '.join(missing)}); install them "
            f"with `apt-get install dataset-fashion-mnist` or set data.root to a folder holding them")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _npy_cache(name: str, stamp: str, make: Callable[[], tuple[np.ndarray, np.ndarray]],
               mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) decoded once by `make` into the cache as two .npy files (written under a temp name
    and renamed, so workers starting together never read half a file), then loaded from there."""
    cx, cy = cache_dir() / f"{name}-{stamp}-x.npy", cache_dir() / f"{name}-{stamp}-y.npy"
    if not (cx.exists() and cy.exists()):
        for target, arr in zip((cx, cy), make(), strict=True):
            tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, target)
    return np.load(cx, mmap_mode="r" if mmap else None), np.load(cy)


def _fashion_mnist(root: str, split: str) -> Arrays:
    """Decode the idx files once into a normalised .npy cache, then memory-map it on every load."""
    images, labels = (Path(root) / f for f in FMNIST_FILES[split])
    stamp = hashlib.sha1(f"{images.resolve()}:{images.stat().st_mtime_ns}".encode()).hexdigest()[:12]

    def decode() -> tuple[np.ndarray, np.ndarray]:
        x = ((_read_idx(images).astype(np.float32) / 255.0 - FMNIST_MEAN) / FMNIST_STD)[:, None]
        return x, _read_idx(labels).astype(np.int64)

    x, y = _npy_cache(f"fmnist-{split}", stamp, decode, mmap=True)
    return Arrays(x, y, 10)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images / 16, labels), from the cache when it has them: importing
    sklearn costs each new worker process about 1.7 s of CPU, reading two small .npy files nothing.
    The cache is keyed by the bundled data file's size and mtime, found without importing sklearn."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    src = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None

    def decode() -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images.astype(np.float32) / 16.0)[:, None], d.target.astype(np.int64)

    if src is None or not src.is_file():
        return decode()
    st = src.stat()
    return _npy_cache("digits", f"{st.st_size}-{st.st_mtime_ns}", decode)


def _digits(seed: int, test_fraction: float, split: str) -> Arrays:
    x, y = _digits_arrays()
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    idx = np.sort(perm[:n_test] if split == "test" else perm[n_test:])
    return Arrays(x[idx], y[idx], 10)


def _synthetic(data: dict[str, Any], seed: int, split: str) -> Arrays:
    """Gaussian features labelled by a fixed random linear teacher: learnable, any size, no files.

    For smoke tests and for benchmarks of the round machinery at thousands of clients, where a
    real dataset would be too small to split or would dominate the cost.
    """
    shape = tuple(data.get("shape") or [16])
    classes = int(data.get("num_classes") or 4)
    dim = int(np.prod(shape))
    teacher = np.random.default_rng([seed, 0x7EAC]).standard_normal((dim, classes)).astype(np.float32)
    n = int(data["clients"]) * int(data.get("samples_per_client") or 32) if split == "train" else 1024
    x = np.random.default_rng([seed, 1 if split == "train" else 2]).standard_normal((n, dim), dtype=np.float32)
    return Arrays(x.reshape(n, *shape), (x @ teacher).argmax(1).astype(np.int64), classes)


def read_parquet(path: str, spec: dict[str, Any]) -> tuple[Arrays, np.ndarray | None]:
    """Features and labels from a Parquet file; also the natural-partition column when asked."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    label = spec.get("label", "label")
    if label not in table.column_names:
        raise ValueError(f"{path}: no label column {label!r} (columns: {table.column_names})")
    group_col = (spec.get("partition") or {}).get("column")
    feats = spec.get("features") or [c for c in table.column_names if c not in (label, group_col)]
    cols = []
    for name in feats:
        col = table.column(name).combine_chunks()
        if hasattr(col.type, "value_type"):  # list or fixed-size list column: one row per sample
            width = len(col.values) // max(len(col), 1)
            cols.append(np.asarray(col.flatten(), dtype=np.float32).reshape(len(col), width))
        else:
            cols.append(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)[:, None])
    x = np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    meta = table.schema.metadata or {}
    shape = spec.get("shape") or json.loads(meta.get(b"fedgrid.shape", b"null")) or [x.shape[1]]
    num_classes = spec.get("num_classes") or json.loads(meta.get(b"fedgrid.num_classes", b"0")) or 0
    y = np.asarray(table.column(label).to_numpy(zero_copy_only=False), dtype=np.int64)
    num_classes = int(num_classes or (int(y.max()) + 1 if len(y) else 2))
    groups = (np.asarray(table.column(group_col).to_numpy(zero_copy_only=False))
              if group_col and group_col in table.column_names else None)
    return Arrays(x.reshape(len(x), *shape), y, num_classes), groups


# -- what sites and the driver call ---------------------------------------------------------------


def load_pool(data: dict[str, Any], seed: int) -> tuple[Arrays, np.ndarray | None]:
    """The training pool a partitioner splits (digits, fashion_mnist, or one parquet file)."""
    ds = data["dataset"]
    if ds == "digits":
        return _digits(seed, data.get("test_fraction", 0.2), "train"), None
    if ds == "synthetic":
        return _synthetic(data, seed, "train"), None
    if ds == "fashion_mnist":
        root = data.get("root") or FMNIST_DEFAULT_ROOT
        if why := fashion_mnist_missing(root):
            raise FileNotFoundError(why)
        return _fashion_mnist(root, "train"), None
    return read_parquet(data["path"], data)


def load_test(data: dict[str, Any], seed: int) -> Arrays | None:
    """The held-out set for central evaluation, or None when the job has none."""
    # data.skew is deliberately not applied: the central test set is the task as a neutral observer
    # sees it, so a model that only fits one site's view of the inputs shows it here
    ds = data["dataset"]
    if ds == "digits":
        return _digits(seed, data.get("test_fraction", 0.2), "test")
    if ds == "synthetic":
        return _synthetic(data, seed, "test")
    if ds == "fashion_mnist":
        return _fashion_mnist(data.get("root") or FMNIST_DEFAULT_ROOT, "test")
    if data.get("test_path"):
        return read_parquet(data["test_path"], data)[0]
    return None


def client_arrays(data: dict[str, Any], client: int, clients: int, seed: int) -> Arrays:
    """One client's rows, with its site's feature skew applied (train and holdout alike: they are
    split from these rows later). The pool and its split are cached so a worker pays for them once."""
    skew = data.get("skew")
    # the skew is left out of the cache keys: sites with different skews in one process (`local`
    # thread sites) share one pool and one split, which are the same whatever the skew
    base = {k: v for k, v in data.items() if k != "skew"}
    if data["dataset"] == "parquet" and "{client" in (data.get("path") or ""):
        path = data["path"].format(client=client)
        # not cached here: one file a client, and a worker may serve thousands of clients; the
        # client object keeps its rows (and is dropped beyond train.keep_clients)
        return apply_skew(read_parquet(path, data)[0], skew, seed, client)
    pool_key, split_key = _keys(data, base, seed, clients)
    pool, groups = _cached(pool_key, lambda: load_pool(data, seed))
    parts = _cached(split_key, lambda: partition(pool.y, clients, data.get("partition") or {}, seed, groups))
    idx = parts[client]
    return apply_skew(Arrays(np.ascontiguousarray(pool.x[idx]), pool.y[idx], pool.num_classes), skew, seed, client)


_LAST_KEYS = Last()


def _keys(data: dict[str, Any], base: dict[str, Any], seed: int, clients: int) -> tuple[str, str]:
    """The pool's and the split's cache keys. Hashing the data block's JSON costs about 0.1 ms, and
    the clients of a cohort share one data block object (apps/memo.py)."""
    return _LAST_KEYS.get((data,), (seed, clients), lambda: (
        _spec_key("pool", {"seed": seed, **base}), _spec_key("split", {"c": clients, "seed": seed, **base})))


def apply_skew(arr: Arrays, skew: dict[str, Any] | None, seed: int, client: int) -> Arrays:
    """`arr` as a site with feature skew ``skew`` (``data.skew``) sees it: rotated by ``rotate``
    degrees over the last two axes, times ``scale``, plus ``shift``, plus Gaussian noise of std
    ``noise`` drawn from (seed, client), so every worker and every resume sees the same rows.

    Returns `arr` itself when there is no skew (or an identity one), so unskewed jobs get exactly
    the arrays they always did; otherwise new arrays, never touching `arr` (it may be a cached or
    memory-mapped pool)."""
    if not skew:
        return arr
    rotate, scale = int(skew.get("rotate") or 0), float(skew.get("scale", 1.0))
    shift, noise = float(skew.get("shift") or 0.0), float(skew.get("noise") or 0.0)
    if rotate % 90:
        raise ValueError(f"data.skew.rotate must be a multiple of 90 degrees, got {rotate}")
    k = (rotate // 90) % 4
    if (k, scale, shift, noise) == (0, 1.0, 0.0, 0.0):
        return arr
    x = arr.x
    if k:
        if x.ndim < 3:
            raise ValueError(f"data.skew.rotate needs image rows (N x ... x H x W), got rows of shape {x.shape[1:]}")
        if k % 2 and x.shape[-1] != x.shape[-2]:
            # a quarter turn would swap H and W, and the model was built for the unrotated shape
            raise ValueError(f"data.skew.rotate {rotate} needs square images, got {x.shape[-2]}x{x.shape[-1]}")
        x = np.rot90(x, k, axes=(-2, -1))
    # np.float32 scalars: the rows stay float32 under any NumPy's promotion rules
    x = np.ascontiguousarray(x, dtype=np.float32) * np.float32(scale) + np.float32(shift)
    if noise:
        rng = np.random.default_rng([seed, client, 0x5E3])
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise)
    return Arrays(x, arr.y, arr.num_classes)


def meta(data: dict[str, Any], test: Arrays | None) -> tuple[tuple[int, ...], int]:
    """Input shape and class count, known without reading any training rows on the driver."""
    ds = data["dataset"]
    if ds == "digits":
        return (1, 8, 8), 10
    if ds == "fashion_mnist":
        return (1, 28, 28), 10
    shape, classes = data.get("shape"), data.get("num_classes")
    if test is not None:
        return tuple(shape or test.shape), int(classes or test.num_classes)
    if not (shape and classes):
        import pyarrow.parquet as pq

        path = data["path"].format(client=0) if "{client" in data["path"] else data["path"]
        md = pq.read_schema(path).metadata or {}
        shape = shape or json.loads(md.get(b"fedgrid.shape", b"null"))
        classes = classes or json.loads(md.get(b"fedgrid.num_classes", b"null"))
    if not (shape and classes):
        raise ValueError("parquet data without a test_path needs data.shape and data.num_classes")
    return tuple(shape), int(classes)


def describe(data: dict[str, Any]) -> str:
    ds = data["dataset"]
    part = data.get("partition") or {}
    how = part.get("kind", "iid")
    if how == "dirichlet":
        how += f"(alpha={part.get('alpha')})"
    elif how == "shards":
        how += f"({part.get('shards_per_client')} per client)"
    elif how == "natural":
        how += f"(by {part.get('column')})"
    skew = data.get("skew") or {}
    # only the parts that differ from the identity, so `fedgrid check` shows each site's skew briefly
    if turned := {k: v for k, v in skew.items() if v != {"rotate": 0, "scale": 1.0}.get(k, 0.0)}:
        how += ", skew " + " ".join(f"{k} {v:g}" for k, v in turned.items())
    if ds == "parquet":
        return f"parquet {data.get('path')} ({how})"
    if ds == "custom":
        return f"loaded by the job's client code ({how} split where it uses ctx.split)"
    return f"{ds} ({how})"
