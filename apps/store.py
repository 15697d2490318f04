"""The data plane: params that are too big to ride inside a task travel by reference.

``Store(url).put(params, key) -> Ref`` writes one object; ``Store.get(ref)`` (or :func:`fetch`)
reads it back and verifies it. A :class:`Ref` is the object's URI plus its sha256 and byte size,
so whoever reads it (a site reading the global model, the driver reading an update) knows it got
exactly what was written: a short read, a stale file on a lagging shared filesystem or a corrupted
object fails with a clear error instead of training on garbage.

The URL is a directory every site can reach (a shared filesystem path) or any fsspec URL
(``s3://bucket/prefix``, ``gs://...``; their packages are optional extras). Local paths use plain
file I/O: one write, one read, no copies beyond the hash.

Object format (deliberately trivial, so any language can read it and a local read is one syscall):
``FGPARAMS1\\n``, an 8-byte little-endian header length, a JSON header ``[[name, dtype, shape,
offset, nbytes], ...]``, then the arrays' raw bytes, each aligned to 64 bytes. Offsets count
from the first 64-byte boundary after the header; fedgrid writes the arrays in header order, and a
:class:`Reader` (which reads an object front to back in bounded pieces, for a driver that must not
hold a whole 1 GB update) accepts only objects laid out that way.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

MAGIC = b"FGPARAMS1\n"
ALIGN = 64
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class StoreError(Exception):
    """An object is missing, truncated or does not match its reference."""


@dataclass(frozen=True)
class Ref:
    """Where an object is and what it must be: the reader verifies both size and sha256."""

    uri: str
    sha256: str
    nbytes: int

    def short(self) -> str:
        return f"{self.uri} ({self.nbytes / 2**20:.1f} MB, sha256 {self.sha256[:12]})"


def _is_url(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def _local(s: str) -> str:
    return s[len("file://"):] if s.startswith("file://") else s


def filesystem(url: str) -> Any:
    """The fsspec filesystem of a URL, or a clear error naming the extra to install."""
    try:
        import fsspec
    except ImportError:
        raise StoreError(f"{url}: URLs need the fsspec package (pip install fsspec)") from None
    proto = url.split("://", 1)[0]
    try:
        return fsspec.filesystem(proto)
    except (ImportError, ValueError) as e:
        extra = EXTRAS.get(proto)
        hint = f"pip install 'fedgrid[{extra}]'" if extra else str(e)
        raise StoreError(f"{url}: no filesystem for {proto}:// ({hint})") from None


def encode(params: dict[str, np.ndarray]) -> list[Any]:
    """The object as a list of buffers (header, then each array, padded): written without joining."""
    entries, off = [], 0
    arrays = [np.asarray(a) if np.asarray(a).flags.c_contiguous else np.asarray(a).copy(order="C")
              for a in params.values()]  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    for name, a in zip(params, arrays, strict=True):
        entries.append([name, a.dtype.str, list(a.shape), off, a.nbytes])
        off += a.nbytes + (-a.nbytes) % ALIGN
    header = json.dumps(entries).encode()
    pre = MAGIC + struct.pack("<Q", len(header)) + header
    pre += b"\0" * ((-len(pre)) % ALIGN)
    bufs: list[Any] = [pre]
    for (_, _, _, _, n), a in zip(entries, arrays, strict=True):
        bufs.append(a.reshape(-1).view(np.uint8).data)
        if n % ALIGN:
            bufs.append(b"\0" * ((-n) % ALIGN))
    return bufs


@dataclass(frozen=True)
class Entry:
    """One array of an object as its header describes it (offset from the start of the data)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def entries(header: bytes, room: int) -> list[Entry]:
    """The header's arrays, each checked to be a plain dtype whose bytes fit its shape and lie,
    in order and without overlap, inside the `room` bytes after the header."""
    try:
        raw = json.loads(header)
        out, end = [], 0
        for name, dtype, shape, off, n in raw:
            dt = np.dtype(dtype)
            shape = tuple(int(d) for d in shape)
            if (not isinstance(name, str) or dt.hasobject or min(shape, default=0) < 0 or off < end
                    or n != int(np.prod(shape, dtype=np.int64)) * dt.itemsize or off + n > room):
                raise ValueError(name)
            out.append(Entry(name, dt, shape, int(off), int(n)))
            end = off + n
    except (TypeError, ValueError) as e:
        raise StoreError(f"not a fedgrid params object (header entry {str(e)[:40]!r})") from None
    return out


def decode(buf: bytes | bytearray | memoryview) -> OrderedDict[str, np.ndarray]:
    mv = memoryview(buf)
    if bytes(mv[:len(MAGIC)]) != MAGIC:
        raise StoreError("not a fedgrid params object (bad magic)")
    (hlen,) = struct.unpack("<Q", mv[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8
    base = start + hlen + (-(start + hlen)) % ALIGN
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for e in entries(bytes(mv[start:start + hlen]), len(mv) - base):
        out[e.name] = np.frombuffer(mv, dtype=e.dtype, count=e.nbytes // max(e.dtype.itemsize, 1),
                                    offset=base + e.offset).reshape(e.shape)
    return out


def _digest(bufs: list[Any]) -> tuple[str, int]:
    """sha256 and size of an object given as its buffers."""
    h, size = hashlib.sha256(), 0
    for b in bufs:
        h.update(b)
        size += len(b) if isinstance(b, bytes) else b.nbytes
    return h.hexdigest(), size


class Store:
    """Objects under one root URL; keys are relative paths such as ``round-000003/global``."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.remote = _is_url(self.url)
        self._fs = filesystem(self.url) if self.remote else None  # set exactly when remote

    def _uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    def put(self, params: dict[str, np.ndarray], key: str) -> Ref:
        bufs = encode(params)
        sha, size = _digest(bufs)
        return self._write(bufs, key, sha, size)

    def put_addressed(self, params: dict[str, np.ndarray], folder: str) -> Ref:
        """Write an object under its own sha256 inside `folder`: two writers of different
        contents never replace each other (an abandoned attempt cannot overwrite an accepted
        version), and a reference names its key by its digest."""
        bufs = encode(params)
        sha, size = _digest(bufs)
        return self._write(bufs, f"{folder}/{sha}", sha, size)

    def _write(self, bufs: list[Any], key: str, sha: str, size: int) -> Ref:
        uri = self._uri(key)
        if self._fs is not None:
            with self._fs.open(uri, "wb") as f:
                for b in bufs:
                    f.write(b)
        else:
            path = Path(_local(uri))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            with open(tmp, "wb") as f:
                f.writelines(bufs)
            os.replace(tmp, path)  # readers never see a half-written object
        return Ref(uri, sha, size)

    def get(self, key: str) -> OrderedDict[str, np.ndarray] | None:
        """An object by key, unverified, or None when there is none."""
        try:
            return decode(read_bytes(self._uri(key)))
        except FileNotFoundError:
            return None

    def keys(self, folder: str) -> list[str]:
        """Names of the objects directly under a folder key (none if it does not exist)."""
        uri = self._uri(folder)
        try:
            if self._fs is not None:
                return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(uri, detail=False))
            return sorted(n for n in os.listdir(_local(uri)) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def times(self, folder: str) -> dict[str, float]:
        """Each object directly under a folder key and when it was last written (seconds since the
        epoch, the store's own clock); empty if the folder does not exist."""
        out = {}
        for name in self.keys(folder):
            uri = self._uri(f"{folder}/{name}")
            try:
                if self._fs is not None:
                    info = self._fs.info(uri)
                    stamp = info.get("mtime") or info.get("LastModified") or info.get("updated")
                    if stamp is None:
                        continue
                    out[name] = stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)
                else:
                    out[name] = os.stat(_local(uri)).st_mtime
            except (FileNotFoundError, TypeError, ValueError):
                continue  # gone meanwhile, or a store that keeps no times: left alone
        return out

    def delete(self, prefix: str) -> None:
        """Remove one object, or every object under a key prefix (a finished round's objects)."""
        uri = self._uri(prefix)
        if self._fs is not None:
            if self._fs.exists(uri):
                self._fs.rm(uri, recursive=True)
            return
        import shutil

        path = Path(_local(uri))
        if path.is_file():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)

    def sweep(self, upto: int) -> None:
        """Remove every ``round-NNNNNN`` folder up to round `upto`, including objects a late client
        of an earlier round wrote after that round was cleaned."""
        for key in self._round_keys():
            if int(key.rsplit("-", 1)[1]) <= upto:
                self.delete(key)

    def _round_keys(self) -> list[str]:
        if self._fs is not None:
            try:
                names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(self.url, detail=False)]
            except FileNotFoundError:
                return []
        else:
            try:
                names = os.listdir(_local(self.url))
            except FileNotFoundError:
                return []
        return [n for n in names if n.startswith("round-") and n[6:].isdigit()]

    def probe(self) -> None:
        """Write, read back and delete a small object: proves the store is reachable and writable."""
        key = f".probe-{uuid.uuid4().hex[:8]}"
        ref = self.put({"probe": np.arange(4, dtype=np.int32)}, key)
        try:
            fetch(ref)
        finally:
            if self._fs is not None:
                self._fs.rm(ref.uri)
            else:
                Path(_local(ref.uri)).unlink(missing_ok=True)


def read_bytes(uri: str, expected: int | None = None) -> bytes | bytearray:
    """The whole object; a local file is read straight into one writeable buffer (no extra copy).

    With `expected`, the size is checked before a byte is read, and a local path must be a regular
    file (opened without blocking: a FIFO or a device named by a reference must not stall the
    reader, nor a huge file fill its memory)."""
    if _is_url(uri):
        fs = filesystem(uri)
        if expected is not None and (size := fs.size(uri)) != expected:
            raise StoreError(f"{uri}: {size} bytes, expected {expected} (truncated or replaced)")
        return bytearray(fs.cat_file(uri))  # writeable arrays: torch loads them as they are
    fd = os.open(_local(uri), os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if expected is not None and not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{uri}: not a regular file")
        if expected is not None and st.st_size != expected:
            raise StoreError(f"{uri}: {st.st_size} bytes, expected {expected} (truncated or replaced)")
        buf = bytearray(st.st_size)
        n = f.readinto(buf)
    return buf if n == len(buf) else buf[:n]


def fetch(ref: Ref) -> OrderedDict[str, np.ndarray]:
    """Read and verify an object (any reader: a site or the driver)."""
    try:
        data = read_bytes(ref.uri, ref.nbytes)
    except FileNotFoundError:
        raise StoreError(f"{ref.uri}: object not found (is the store reachable from here?)") from None
    if len(data) != ref.nbytes:
        raise StoreError(f"{ref.uri}: {len(data)} bytes, expected {ref.nbytes} (truncated or replaced)")
    got = hashlib.sha256(data).hexdigest()
    if got != ref.sha256:
        raise StoreError(f"{ref.uri}: sha256 {got[:12]} does not match the reference {ref.sha256[:12]}")
    return decode(data)


PIECE = 1 << 22  # bytes a Reader holds at once


class Reader:
    """An object read front to back, at most PIECE bytes at a time, hashed as it is read.

    `entries` (the header) are known on opening; `arrays()` then yields each array's bytes in
    pieces and, after the last, checks the size and the sha256 against the reference: it raises
    StoreError there if they differ, so whoever consumes the pieces must treat nothing as verified
    until the iteration has ended (the driver's fold keeps them in a private spill until then).
    """

    def __init__(self, ref: Ref):
        self.ref = ref
        self._h = hashlib.sha256()
        self._buf = bytearray(PIECE)
        self._f = self._open()
        try:
            head = self._take(len(MAGIC) + 8)
            if bytes(head[:len(MAGIC)]) != MAGIC:
                raise StoreError(f"{ref.uri}: not a fedgrid params object (bad magic)")
            (hlen,) = struct.unpack("<Q", head[len(MAGIC):])
            if hlen > ref.nbytes:
                raise StoreError(f"{ref.uri}: header length {hlen} beyond the object's {ref.nbytes} bytes")
            start = len(MAGIC) + 8 + hlen
            header = self._take(hlen, copy=True)
            self._skip((-start) % ALIGN)
            self._base = start + (-start) % ALIGN
            self.entries = entries(header, ref.nbytes - self._base)
        except BaseException:
            self.close()
            raise

    def _open(self) -> Any:
        uri, n = self.ref.uri, self.ref.nbytes
        if _is_url(uri):
            fs = filesystem(uri)
            if (size := fs.size(uri)) != n:
                raise StoreError(f"{uri}: {size} bytes, expected {n} (truncated or replaced)")
            return fs.open(uri, "rb")
        try:
            f = os.fdopen(os.open(_local(uri), os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)
        except FileNotFoundError:
            raise StoreError(f"{uri}: object not found (is the store reachable from here?)") from None
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != n:
            f.close()
            raise StoreError(f"{uri}: not a regular file of {n} bytes (truncated or replaced)")
        return f

    @overload
    def _take(self, n: int, copy: Literal[True]) -> bytes: ...

    @overload
    def _take(self, n: int, copy: bool = False) -> memoryview | bytes: ...

    def _take(self, n: int, copy: bool = False) -> memoryview | bytes:
        """The next `n` (<= PIECE, or any size with `copy`) bytes, hashed; short reads are an error."""
        out = bytearray(n) if copy or n > PIECE else self._buf
        mv, got = memoryview(out)[:n], 0
        while got < n:
            k = self._f.readinto(mv[got:])
            if not k:
                raise StoreError(f"{self.ref.uri}: ended early (truncated or replaced)")
            got += k
        self._h.update(mv)
        return bytes(mv) if copy else mv

    def _skip(self, n: int) -> None:
        while n > 0:
            n -= len(self._take(min(n, PIECE)))

    def arrays(self) -> Iterator[tuple[Entry, int, np.ndarray]]:
        """(entry, first element, the piece's elements) for every piece of every array, in order;
        each piece is valid only until the next. Raises StoreError at the end on a wrong object."""
        pos = 0
        for e in self.entries:
            self._skip(e.offset - pos)
            step = max(PIECE // max(e.dtype.itemsize, 1), 1) * e.dtype.itemsize
            for off in range(0, e.nbytes, step):
                piece = self._take(min(step, e.nbytes - off))
                yield e, off // e.dtype.itemsize, np.frombuffer(piece, dtype=e.dtype)
            pos = e.offset + e.nbytes
        self._skip(self.ref.nbytes - self._base - pos)
        if self._f.read(1):
            raise StoreError(f"{self.ref.uri}: longer than {self.ref.nbytes} bytes (replaced)")
        if (got := self._h.hexdigest()) != self.ref.sha256:
            raise StoreError(f"{self.ref.uri}: sha256 {got[:12]} does not match the reference {self.ref.sha256[:12]}")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def relay(ref: Ref, url: str, key: str) -> tuple[Ref, tuple[float, float]]:
    """Fetch an object and write it back under `key`, timing both: a site's round trip to the store.

    Runs at a site as a task (the data-plane benchmark; also a quick way to measure a new site's
    path to a shared store). Returns the new ref and (fetch+verify seconds, write+hash seconds).
    """
    import time

    t0 = time.perf_counter()
    params = fetch(ref)
    t1 = time.perf_counter()
    back = Store(url).put(params, key)
    return back, (t1 - t0, time.perf_counter() - t1)
