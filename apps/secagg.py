"""Secure aggregation, the site side: pairwise additive masks in the manner of SecAgg / SecAgg+.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017;
Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (SecAgg+), CCS 2020.

Each round, for the clients S selected:

1. ``keys``: a client makes an X25519 key pair and a 32-byte self-mask seed ``b_i``, keeps both
   at its site (a file under the site's temp dir, never sent), and publishes its public key.
2. ``share``: given every public key, it splits its secret key and ``b_i`` into Shamir shares
   (t of |S|, over the prime field 2^521 - 1) and encrypts client j's pair of shares with AES-GCM
   under a key derived from the X25519 agreement with j. The driver only relays ciphertexts.
3. ``mask`` (inside the train task): its update, the example-weighted delta ``n_i * (x_i - G)``
   and ``n_i`` itself, in fixed point (``2^frac_bits``) in the ring Z_2^64, plus ``PRG(b_i)``, plus
   ``PRG(s_ij)`` for every other client j of stage 2 with i < j and minus it for i > j, where
   ``s_ij`` is derived from the agreement of i and j. Alone it is uniformly random: it says
   nothing about the update. Summed over everyone the pairwise masks cancel.
4. ``unmask``: each surviving client decrypts the shares addressed to it and returns the share of
   ``b_i`` for every client whose masked update arrived, and the share of the secret key for every
   client that dropped after stage 2 -- never both for one client. With t shares of each the
   driver removes the self masks and recomputes the pairwise masks a dropped client left behind.

The driver learns the sum and nothing else, provided fewer than t clients collude with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import tempfile
from pathlib import Path

import numpy as np

from fedgrid.apps.records import SecaggOptions, SecaggReply, SecaggStep, ShareReply, UnmaskReply

PRIME = 2**521 - 1  # Mersenne: holds a 256-bit secret in one field element


# -- Shamir secret sharing over GF(PRIME) -----------------------------------------------------------
def shamir_split(secret: bytes, ids: list[int], t: int) -> dict[int, int]:
    """Shares of `secret` for evaluation points ``id + 1``; any `t` of them recover it."""
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    out = {}
    for i in ids:
        x, y = i + 1, 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        out[i] = y
    return out


def shamir_join(shares: dict[int, int], t: int, nbytes: int = 32) -> bytes:
    """The secret from at least `t` shares ({id: share}); Lagrange interpolation at zero."""
    if len(shares) < t:
        raise ValueError(f"{len(shares)} shares, {t} needed")
    pts = [(i + 1, y) for i, y in list(shares.items())[:t]]
    total = 0
    for j, (xj, yj) in enumerate(pts):
        num, den = 1, 1
        for m, (xm, _) in enumerate(pts):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        total = (total + yj * num * pow(den, -1, PRIME)) % PRIME
    if total >> (8 * nbytes):  # too few (or wrong) shares interpolate to a random field element
        raise ValueError("the shares do not reconstruct a secret")
    return total.to_bytes(nbytes, "big")


# -- key agreement, encryption, masks ---------------------------------------------------------------
def _kdf(shared: bytes, label: bytes, rnd: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=rnd.to_bytes(8, "big"),
                info=b"fedgrid-secagg-" + label).derive(shared)


def agree(sk: bytes, pk: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))


def keypair() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    sk = X25519PrivateKey.generate()
    return (sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def prg(seed: bytes, n: int) -> np.ndarray:
    """n pseudo-random words of Z_2^64 from a 32-byte seed: the ChaCha20 keystream, a
    cryptographic generator (a statistical one such as PCG64 gives its state away from its output,
    and with it every mask it would make), the same on every machine."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    stream = Cipher(algorithms.ChaCha20(seed[:32], b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8").astype(np.uint64)


def pair_seed(sk_i: bytes, pk_j: bytes, rnd: int) -> bytes:
    return _kdf(agree(sk_i, pk_j), b"mask", rnd)


def pair_masks(i: int, sk_i: bytes, pks: dict[int, bytes], n: int, rnd: int) -> np.ndarray:
    """Sum over the other clients j of +PRG(s_ij) (i < j) or -PRG(s_ij) (i > j), in Z_2^64."""
    total = np.zeros(n, np.uint64)
    for j, pk in pks.items():
        if j == i:
            continue
        m = prg(pair_seed(sk_i, pk, rnd), n)
        total = total + m if i < j else total - m  # uint64 arithmetic wraps: the ring Z_2^64
    return total


def encrypt(sk_i: bytes, pk_j: bytes, rnd: int, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return nonce + AESGCM(_kdf(agree(sk_i, pk_j), b"enc", rnd)).encrypt(nonce, data, None)


def decrypt(sk_j: bytes, pk_i: bytes, rnd: int, blob: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(_kdf(agree(sk_j, pk_i), b"enc", rnd)).decrypt(blob[:12], blob[12:], None)


# -- fixed point ------------------------------------------------------------------------------------
def to_ring(v: np.ndarray, frac_bits: int) -> np.ndarray:
    """float64 values as two's-complement fixed point in Z_2^64."""
    return np.rint(np.asarray(v, np.float64) * 2.0**frac_bits).astype(np.int64).view(np.uint64)


def from_ring(r: np.ndarray, frac_bits: int) -> np.ndarray:
    return r.view(np.int64).astype(np.float64) / 2.0**frac_bits


# -- the site's secrets -----------------------------------------------------------------------------
def _secret_path(sa: SecaggOptions, client: int, rnd: int) -> Path:
    """Where a client keeps this round's secrets: its site's own temp dir, never the shared store."""
    # the run's unguessable nonce in the name: a folder another user made first is never this one
    top = f"fedgrid-secagg-{os.getuid()}" + (f"-{sa['nonce']}" if sa.get("nonce") else "")
    d = Path(sa.get("key_dir") or tempfile.gettempdir()) / top / sa["run_id"]
    return d / f"client-{client:05d}-round-{rnd:06d}.key"


def _private_dir(d: Path) -> Path:
    """`d` and its parent, made if missing (mode 0700), and refused unless each is a real
    directory (not a link) owned by this user; one of ours that others could enter is closed to
    them. Another local user must not read a client's secrets, nor plant a link that sends them
    elsewhere."""
    d.parent.parent.mkdir(parents=True, exist_ok=True)  # key_dir itself (the temp dir by default)
    for part in (d.parent, d):
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o700)
        st = os.lstat(part)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"secagg key directory {part} must be a directory of uid {os.getuid()} (it is "
                                  f"{'a link' if stat.S_ISLNK(st.st_mode) else 'not a directory'} or of uid "
                                  f"{st.st_uid})")
        if st.st_mode & 0o077:
            os.chmod(part, 0o700)
    return d


def _save(path: Path, obj: dict[str, bytes]) -> None:
    _private_dir(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({k: v.hex() for k, v in obj.items()}, f)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        return {k: bytes.fromhex(v) for k, v in json.load(f).items()}


def _pack(frm: int, to: int, sk_share: int, b_share: int) -> bytes:
    """A share pair as plain JSON (never pickle: it comes from another client)."""
    return json.dumps([frm, to, hex(sk_share), hex(b_share)]).encode()


def _unpack(raw: bytes) -> tuple[int, int, int, int]:
    frm, to, sk, b = json.loads(raw)
    return int(frm), int(to), int(sk, 16), int(b, 16)


# -- the three site steps (mask runs inside the train app) ----------------------------------------
def step(task: SecaggStep) -> SecaggReply:
    """One site step of the protocol: ``task["secagg"]["step"]`` is keys, share or unmask (the
    records of the request and of each reply: apps/records.py)."""
    which = task["secagg"]["step"]
    if which == "keys":
        return _keys(task)
    if which == "share":
        return _share(task)
    if which == "unmask":
        return _unmask(task)
    raise KeyError(which)


def _keys(task: SecaggStep) -> bytes:
    path = _secret_path(task["secagg"], task["client"], task["round"])
    for old in path.parent.glob(f"client-{task['client']:05d}-round-*.key"):  # earlier rounds' secrets
        old.unlink(missing_ok=True)
    sk, pk = keypair()
    _save(path, {"sk": sk, "b": secrets.token_bytes(32)})
    return pk


def _share(task: SecaggStep) -> ShareReply:
    sa, me = task["secagg"], task["client"]
    mine = _load(_secret_path(sa, me, task["round"]))
    pks = {int(j): pk for j, pk in sa["pks"].items()}
    ids = sorted(pks)
    sk_shares, b_shares = shamir_split(mine["sk"], ids, sa["t"]), shamir_split(mine["b"], ids, sa["t"])
    out = {}
    for j in ids:
        blob = _pack(me, j, sk_shares[j], b_shares[j])
        out[j] = blob if j == me else encrypt(mine["sk"], pks[j], task["round"], blob)
    return out


def mask(sa: SecaggOptions, me: int, rnd: int, params: dict[str, np.ndarray], start: dict[str, np.ndarray],
         n: int) -> np.ndarray:
    """The masked update: ring(n * delta of every float tensor, then n) + PRG(b) + pairwise masks."""
    mine = _load(_secret_path(sa, me, rnd))
    names = sa["names"]
    flat = np.concatenate([(np.asarray(params[k], np.float64) - np.asarray(start[k], np.float64)).ravel() * n
                           for k in names] + [np.array([float(n)])])
    y = to_ring(flat, sa["frac_bits"])
    pks = {int(j): pk for j, pk in sa["pks"].items()}
    return y + prg(mine["b"], y.size) + pair_masks(me, mine["sk"], pks, y.size, rnd)


def _unmask(task: SecaggStep) -> UnmaskReply:
    """Shares of b for the survivors, of the secret key for the dropped; never both for one client.
    Shares that do not decrypt, or are not what their sender claims, are named in "unreadable"
    (their sender misbehaved) instead of failing this client's step."""
    sa, me = task["secagg"], task["client"]
    path = _secret_path(sa, me, task["round"])
    mine = _load(path)
    survivors, dropped = set(sa["survivors"]), set(sa["dropped"])
    if survivors & dropped:
        raise ValueError("secagg: a client cannot be both a survivor and dropped")
    out: UnmaskReply = {"b": {}, "sk": {}, "unreadable": []}
    for i, blob in sa["inbox"].items():
        i = int(i)
        try:
            raw = blob if i == me else decrypt(mine["sk"], sa["pks"][i], task["round"], blob)
            frm, to, sk_share, b_share = _unpack(raw)
        except Exception:  # noqa: BLE001 - a peer's garbage is the peer's fault: say whose, go on
            out["unreadable"].append(i)
            continue
        if (frm, to) != (i, me):
            out["unreadable"].append(i)
            continue
        if i in survivors:
            out["b"][i] = b_share
        elif i in dropped:
            out["sk"][i] = sk_share
    path.unlink(missing_ok=True)  # this round is over for this client
    return out

