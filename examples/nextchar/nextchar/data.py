"""The text: Debian's ``fortunes`` package, one client per source file (``art``, ``computers``,
``cookie``, ...), each with its own voice, length and character mix, as LEAF's Shakespeare gives one
client per role. Entries are separated by lines holding ``%``; the ``.dat`` index files and the
``.u8`` symlinks are not text."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = "/usr/share/games/fortunes"

# A fixed vocabulary, the same at every site without looking at anyone's data: newline, tab, the
# 95 printable ASCII characters, and one index for everything else (accents, box drawing, ...).
CHARS = "\n\t" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(CHARS)
VOCAB = len(CHARS) + 1
_INDEX = np.full(0x110000, UNKNOWN, np.int64)
_INDEX[[ord(c) for c in CHARS]] = np.arange(len(CHARS))

_OVERSTRIKE = re.compile(r".\x08")  # "_\bA" (underlined A) and "A\bA" (bold A) in old fortune files


def files(root: str = ROOT) -> list[Path]:
    """The fortune source files under `root`, sorted by name: plain files only."""
    out = [p for p in sorted(Path(root).iterdir())
           if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")]
    if not out:
        raise FileNotFoundError(f"no fortune files under {root} (apt-get install fortunes)")
    return out


def read_text(path: Path) -> str:
    """One file's entries, each ended by a blank line: the `%` separators become paragraph breaks."""
    raw = path.read_bytes().decode("utf-8", errors="replace")
    raw = _OVERSTRIKE.sub("", raw).replace("\r", "")
    entries = [e.strip("\n") for e in re.split(r"(?m)^%\s*$", raw)]
    return "".join(e + "\n\n" for e in entries if e.strip())


def encode(text: str) -> np.ndarray:
    return _INDEX[np.frombuffer(text.encode("utf-32-le"), np.uint32)]


def client_files(client: int, clients: int, root: str = ROOT) -> list[Path]:
    """Client `client`'s files: with as many clients as files, one file each; with fewer clients,
    every `clients`-th file (so each client still holds whole sources, never a random mix)."""
    return files(root)[client::clients]


def client_text(client: int, clients: int, root: str = ROOT, holdout: float = 0.1,
                min_holdout: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(train, held out) character ids of one client: the tail of each of its files is held out
    for federated evaluation (at least `min_holdout` characters, at most half a file)."""
    train, held = [], []
    for p in client_files(client, clients, root):
        ids = encode(read_text(p))
        k = min(max(int(len(ids) * holdout), min_holdout), len(ids) // 2)
        train.append(ids[:len(ids) - k])
        held.append(ids[len(ids) - k:])
    return np.concatenate(train), np.concatenate(held)
