"""Secure aggregation: Shamir shares, masks that hide one update and cancel in the sum, and what
the config refuses (real runs that match plain aggregation: tests/integration/test_secagg_run.py)."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from fedgrid.apps import secagg as sa


def test_shamir_needs_t_shares() -> None:
    secret = bytes(range(32))
    shares = sa.shamir_split(secret, [0, 1, 2, 3, 4], t=3)
    assert sa.shamir_join({k: shares[k] for k in (0, 2, 4)}, 3) == secret
    assert sa.shamir_join({k: shares[k] for k in (1, 3, 4)}, 3) == secret
    # two shares of a 3-of-5 split say nothing: interpolating them gives a random field element
    with pytest.raises(ValueError, match="do not reconstruct"):
        sa.shamir_join({k: shares[k] for k in (0, 1)}, 2)
    with pytest.raises(ValueError, match="3 needed"):
        sa.shamir_join({0: shares[0], 1: shares[1]}, 3)


def _clients(tmp_path: Path, ids: list[int], rnd: int = 1) -> dict[int, bytes]:
    opts = {"run_id": "t", "key_dir": str(tmp_path), "frac_bits": 24}
    pks = {c: sa.step({"client": c, "round": rnd, "secagg": {**opts, "step": "keys"}}) for c in ids}
    for c in ids:
        sa.step({"client": c, "round": rnd, "secagg": {**opts, "step": "share", "pks": pks, "t": 2}})
    return pks


def test_a_masked_update_reveals_nothing_and_masks_cancel_in_the_sum(tmp_path) -> None:
    ids = [0, 1, 2]
    pks = _clients(tmp_path, ids)
    g = OrderedDict(w=np.zeros(20000, np.float32))
    rng = np.random.default_rng(0)
    updates = {c: OrderedDict(w=rng.normal(0, 0.01, 20000).astype(np.float32)) for c in ids}
    opts = {"run_id": "t", "key_dir": str(tmp_path), "frac_bits": 24, "pks": pks, "names": ["w"]}
    masked = {c: sa.mask(opts, c, 1, updates[c], g, 100) for c in ids}
    plain = sa.to_ring(np.concatenate([updates[0]["w"].astype(np.float64) * 100, [100.0]]), 24)
    m0 = masked[0]
    # alone, client 0's masked vector is uniform in Z_2^64 and unrelated to its update
    assert abs(float(np.mean(m0 >> np.uint64(63))) - 0.5) < 0.02
    assert abs(np.corrcoef(m0.view(np.int64).astype(float), plain.view(np.int64).astype(float))[0, 1]) < 0.03
    decoded = sa.from_ring(m0, 24)[:-1] / 100
    assert float(np.median(np.abs(decoded - updates[0]["w"]))) > 1e6  # reading it as an update: noise
    # the pairwise masks cancel: what is left is the self masks, which the b shares remove
    total = masked[0] + masked[1] + masked[2]
    for c in ids:
        total -= sa.prg(sa._load(sa._secret_path(opts, c, 1))["b"], total.size)
    got = sa.from_ring(total, 24)
    want = sum(updates[c]["w"].astype(np.float64) * 100 for c in ids)
    assert np.abs(got[:-1] - want).max() < 1e-6 and got[-1] == 300
    # the same update masked in another round (fresh keys) is another unrelated vector
    pks2 = _clients(tmp_path, ids, rnd=2)
    again = sa.mask({**opts, "pks": pks2}, 0, 2, updates[0], g, 100)
    assert float(np.mean(again == m0)) < 1e-3


def test_config_refuses_what_secure_aggregation_cannot_see(make_job, tmp_path) -> None:
    from fedgrid.flow.config import ConfigError, parse_job

    base = make_job(tmp_path / "r", secagg={})
    for bad, key in (({"strategy": "median"}, "strategy"), ({"round": {"max_update_norm": 3}}, "round.max_update_norm"),
                     ({"compression": {"up": "int8"}}, "compression.up")):
        with pytest.raises(ConfigError, match=key):
            parse_job({**base, **bad}, "j.yaml")


def test_masks_come_from_the_chacha20_keystream_of_their_seed() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    seed = bytes(range(32))
    words = sa.prg(seed, 5)
    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor().update(bytes(40))
    assert words.dtype == np.uint64 and words.tolist() == np.frombuffer(stream, "<u8").tolist()
    assert not np.array_equal(sa.prg(bytes(32), 5), words)


def test_secrets_stay_in_a_directory_only_their_owner_can_enter(tmp_path) -> None:
    import os
    import stat

    opts = {"run_id": "r", "key_dir": str(tmp_path / "keys")}
    (tmp_path / "keys").mkdir(mode=0o755)
    os.chmod(tmp_path / "keys", 0o755)
    sa._save(sa._secret_path(opts, 1, 1), {"sk": b"\1" * 32})
    d = sa._secret_path(opts, 1, 1).parent
    for part in (d, d.parent):
        assert stat.S_IMODE(os.lstat(part).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(sa._secret_path(opts, 1, 1)).st_mode) == 0o600
    assert sa._load(sa._secret_path(opts, 1, 1)) == {"sk": b"\1" * 32}
    # a link planted where the secrets go (another user in a shared /tmp) is refused, not followed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "keys2").mkdir()
    os.symlink(elsewhere, tmp_path / "keys2" / f"fedgrid-secagg-{os.getuid()}")
    with pytest.raises(PermissionError, match="must be a directory"):
        sa._save(sa._secret_path({"run_id": "r", "key_dir": str(tmp_path / "keys2")}, 1, 1), {"sk": b"x"})
    assert not list(elsewhere.iterdir())


class _Sites:
    """The clients' protocol steps run here, in this process, for the driver's SecureAggregation:
    what is tested is the messages; `tamper(task, answer)` makes one client misbehave."""

    def __init__(self, tamper):
        self.tamper = tamper

    def call(self, site: str, task: dict) -> object:
        from concurrent.futures import Future

        fut: Future = Future()
        try:
            fut.set_result(self.tamper(task, sa.step(task)))
        except Exception as e:  # noqa: BLE001 - a step's error is its client's failed future
            fut.set_exception(e)
        return fut


def _garbage_to_client_0(task, out):
    if task["secagg"]["step"] == "share" and task["client"] == 3:
        out[0] = bytes(len(out[0]))  # well formed, but not a ciphertext client 0 can open
    return out


@pytest.mark.parametrize(("tamper", "dropped", "blamed"), [
    (lambda task, out: b"short" if task["secagg"]["step"] == "keys" and task["client"] == 3 else out, [3], "keys"),
    (lambda task, out: {k: v for k, v in out.items() if k != 1}
     if task["secagg"]["step"] == "share" and task["client"] == 3 else out, [3], "share"),
    (_garbage_to_client_0, [], "did not decrypt"),
])
def test_a_misbehaving_client_is_named_and_the_round_completes_with_the_others(tamper, dropped, blamed, tmp_path,
                                                                            make_job) -> None:
    from fedgrid.apps.update import ClientUpdate
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.privacy.secagg import SecureAggregation

    job = parse_job(make_job(tmp_path / "run", data={"dataset": "digits", "clients": 5},
                             sites=[{"name": "a", "executor": {"kind": "local"}, "clients": 5}],
                             round={"min_clients": 3}, secagg={"threshold": 0.6, "key_dir": str(tmp_path / "k")}))
    agg = SecureAggregation(job, _Sites(tamper), tmp_path / "run")
    g = OrderedDict(w=np.zeros(50, np.float32))
    rng = np.random.default_rng(1)
    masking, failures, train = agg.setup(1, [0, 1, 2, 3, 4], g)
    assert sorted(set(range(5)) - set(masking)) == dropped
    updates, want, n = [], np.zeros(50), 0
    for c in masking:
        x = OrderedDict(w=rng.normal(0, 0.1, 50).astype(np.float32))
        masked = sa.mask(train[c], c, 1, x, g, 10 + c)
        updates.append(agg.check(1, ClientUpdate(client=c, site="a", round=1, num_examples=10 + c,
                                                 params={"masked": masked}, codec="secagg")))
        want, n = want + x["w"].astype(np.float64) * (10 + c), n + 10 + c
    mean = agg.finish(1, updates, g, failures)
    np.testing.assert_allclose(mean.params["w"], want / n, atol=1e-5)  # the honest sum, unmasked
    assert mean.num_examples == n
    (f,) = [f for f in failures if f.client == 3]
    assert blamed in f.reason


@pytest.mark.skipif(os.getuid() != 0, reason="acting as another user needs root (CI runs as root)")
def test_another_user_taking_the_old_predictable_key_directory_first_blocks_nothing(tmp_path) -> None:
    """`<tmp>/fedgrid-secagg-<uid>` could be guessed and made by anyone first (every round then
    failed); the driver's nonce, which only the tasks carry, names the directory now."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o1777)
    keys.chmod(0o1777)  # a shared temp dir, as /tmp is
    taken = keys / f"fedgrid-secagg-{os.getuid()}"
    taken.mkdir()
    os.chown(taken, 65534, 65534)  # `nobody` made it first
    opts = {"run_id": "r", "nonce": "c0ffee" * 4, "key_dir": str(keys)}
    sa._save(sa._secret_path(opts, 1, 1), {"sk": b"\1" * 32})
    assert sa._load(sa._secret_path(opts, 1, 1)) == {"sk": b"\1" * 32}
    assert sa._secret_path(opts, 1, 1).parent.parent.name.endswith("c0ffee" * 4)


def test_a_round_that_fails_its_key_stage_says_why() -> None:
    from fedgrid.apps.update import Failure
    from fedgrid.flow.privacy.secagg import SecAggFailed, SecureAggregation

    agg = SecureAggregation.__new__(SecureAggregation)
    failures = [Failure.of(2, "a", "secagg keys: PermissionError: secagg key directory /tmp/x must be ...")]
    with pytest.raises(SecAggFailed, match=r"0 clients published keys, secagg needs 2 \(client 2: .*PermissionError"):
        agg._enough(1, {"": [2, 3]}, {"": 2}, {}, "published keys", failures)
