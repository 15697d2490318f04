"""Secure aggregation, the driver side: run the protocol's rounds and unmask the sum.

`secagg: {threshold: 0.5}` in the job. The site side, and what each stage does, is in
apps/secagg.py; here the driver sends each stage's task to every client's site (Parsl apps, like
training), relays public keys and encrypted shares, and at the end removes the masks from the sum
of the masked updates: the self masks of the clients whose update arrived (their ``b`` rebuilt
from t shares) and the pairwise masks that a client dropped after stage 2 left in the others'
updates (its secret key rebuilt from t shares). A client lost in stage 1 or 2 is simply not in
the masking; one lost later is recovered as long as t clients answer the unmasking.

The result is one update: ``G + sum(n_i * delta_i) / sum(n_i)`` -- FedAvg's mean -- which the
strategy (FedAvg, FedAvgM, FedAdam, ...) then takes as the round's aggregate. The driver never
holds an individual update, so per-update validation cannot run; a job with
``round.max_update_norm`` and secure aggregation is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from fedgrid.apps import secagg as sa
from fedgrid.apps.codec import is_float
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.config import Job
from fedgrid.flow.rounds.validate import MAX_EXAMPLES


class SecAggFailed(Exception):
    """Too few clients to unmask the round."""


def _held(shares: dict[int, Any], kind: str, of: int, t: int, rnd: int) -> dict[int, int]:
    """The readable shares of client `of`'s secret (`kind`: b or sk) that the unmasking returned;
    fewer than t means its secret cannot be rebuilt (it sent garbage to too many peers)."""
    held = {j: s[kind][of] for j, s in shares.items() if of in s[kind]}
    if len(held) < t:
        raise SecAggFailed(f"round {rnd}: only {len(held)} readable shares of client {of}'s {kind}, secagg needs {t}")
    return held


def _agreed(held: dict[int, int], t: int) -> bytes | None:
    """The secret, if every share agrees: t-subsets that together cover all of them reconstruct
    the same secret. A changed share y_j moves a subset's secret by lambda_j * delta (never zero),
    so a lying share shows as a disagreement. None when they disagree."""
    ids = sorted(held)
    starts = sorted({*range(0, len(ids) - t + 1, t), len(ids) - t})
    found = set()
    for s in starts:
        try:
            found.add(sa.shamir_join({i: held[i] for i in ids[s:s + t]}, t))
        except ValueError:
            return None
    return found.pop() if len(found) == 1 else None


def _join(held: dict[int, int], t: int, liars: set[int]) -> bytes | None:
    """The secret from shares of which at most one holder lied (added to `liars`): the shares of
    known liars are left out first; with t + 2 or more shares one more liar is found by leaving
    each holder out in turn. None when the shares cannot be made to agree."""
    held = {j: v for j, v in held.items() if j not in liars}
    if len(held) >= t and (secret := _agreed(held, t)) is not None:
        return secret
    for j in sorted(held) if len(held) >= t + 2 else ():
        if (secret := _agreed({i: v for i, v in held.items() if i != j}, t)) is not None:
            liars.add(j)
            return secret
    return None


def _share_map(out: Any, ids: list[int]) -> bool:
    """A share step's answer: one ciphertext (bytes) for every client in the masking."""
    return (isinstance(out, dict) and sorted(out) == ids
            and all(isinstance(b, bytes) and 0 < len(b) < 4096 for b in out.values()))


def _unmask_answer(out: Any, survivors: list[int], dropped: list[int]) -> bool:
    """An unmask step's answer: field elements of b for survivors, of sk for the dropped, and the
    senders whose shares it could not read."""
    if not isinstance(out, dict) or set(out) != {"b", "sk", "unreadable"}:
        return False
    b, sk, bad = out["b"], out["sk"], out["unreadable"]
    ok_shares = all(isinstance(d, dict) and all(isinstance(k, int) and isinstance(v, int) and 0 <= v < sa.PRIME
                                                for k, v in d.items()) for d in (b, sk))
    return (ok_shares and set(b) <= set(survivors) and set(sk) <= set(dropped) and isinstance(bad, list)
            and all(isinstance(i, int) and i in set(survivors) | set(dropped) for i in bad))


class SecureAggregation:
    def __init__(self, job: Job, runtime: Any, run_dir: Any):
        assert job.secagg is not None
        self.job, self.runtime, self.spec = job, runtime, job.secagg
        self.sites = job.client_sites()
        self.run_id = f"{job.name}-{hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]}"
        self.rounds: dict[int, dict[str, Any]] = {}

    def threshold(self, m: int) -> int:
        return max(2, math.ceil(self.spec.threshold * m))

    def _opts(self, rnd: int, **more: Any) -> dict[str, Any]:
        return {"run_id": self.run_id, "key_dir": self.spec.key_dir, "frac_bits": self.spec.frac_bits, **more}

    def _stage(self, rnd: int, clients: list[int], opts: dict[int, dict[str, Any]],
               failures: list[Failure], well_formed: Callable[[int, Any], bool]) -> dict[int, Any]:
        """Run one site step for `clients`; their answers, and a failure row for each that did not
        answer or answered something malformed (`well_formed(client, answer)`): one client's bad
        message must cost that client, never the round."""
        futs: dict[Future, int] = {}
        for c in clients:
            task = {"client": c, "site": self.sites[c], "round": rnd, "secagg": opts[c]}
            futs[self.runtime.call(self.sites[c], task)] = c
        out: dict[int, Any] = {}
        why: dict[int, BaseException] = {}
        try:
            for fut in as_completed(futs, timeout=self.job.round.deadline_s):
                c = futs[fut]
                if fut.exception() is not None:
                    why[c] = fut.exception()
                elif well_formed(c, fut.result()):
                    out[c] = fut.result()
                else:
                    why[c] = ValueError(f"malformed answer ({type(fut.result()).__name__})")
        except FutureTimeout:
            pass
        for c in futs.values():
            if c not in out:
                exc = why.get(c)
                cause = f"{type(exc).__name__}: {exc}" if exc is not None else "no answer within round.deadline_s"
                failures.append(Failure.of(c, self.sites[c], f"secagg {opts[c]['step']}: {cause}"))
        return out

    def setup(self, rnd: int, clients: list[int],
              global_params: dict[str, np.ndarray]) -> tuple[list[int], list[Failure], dict[int, dict]]:
        """Stages 1 and 2. Returns the clients in the masking, the failures, and each one's train
        instructions (its neighbours' public keys)."""
        names = [k for k, v in global_params.items() if is_float(v)]
        size = sum(int(global_params[k].size) for k in names) + 1
        failures: list[Failure] = []
        t = self.threshold(len(clients))
        pks = self._stage(rnd, clients, {c: self._opts(rnd, step="keys") for c in clients}, failures,
                          lambda c, pk: isinstance(pk, bytes) and len(pk) == 32)
        if len(pks) < t:
            raise SecAggFailed(f"round {rnd}: {len(pks)} clients published keys, secagg needs {t}")
        ids = sorted(pks)
        shared = self._stage(rnd, ids, {c: self._opts(rnd, step="share", pks=pks, t=t) for c in ids}, failures,
                             lambda c, out: _share_map(out, ids))
        if len(shared) < t:
            raise SecAggFailed(f"round {rnd}: {len(shared)} clients shared keys, secagg needs {t}")
        u1 = sorted(shared)
        self.rounds[rnd] = {"pks": {c: pks[c] for c in u1}, "inbox": {j: {i: shared[i][j] for i in u1} for j in u1},
                            "t": t, "names": names, "size": size}
        train = {c: self._opts(rnd, step="mask", pks={i: pks[i] for i in u1}, names=names, t=t) for c in u1}
        return u1, failures, train

    def check(self, rnd: int, u: ClientUpdate) -> ClientUpdate:
        """A masked update has the masked vector and nothing else (the gather's accept hook)."""
        size = self.rounds[rnd]["size"]
        m = u.params.get("masked")
        if u.codec != "secagg" or m is None or m.dtype != np.uint64 or m.size != size or len(u.params) != 1:
            raise ValueError(f"secagg: expected a masked uint64 vector of {size} values")
        u.wire_nbytes = int(m.nbytes)
        return u

    @staticmethod
    def _secret(shares: dict[int, Any], kind: str, of: int, t: int, rnd: int, liars: set[int]) -> bytes:
        """Client `of`'s secret (b or sk) from the unmasking's shares, a lying holder found and left out."""
        if (secret := _join(_held(shares, kind, of, t, rnd), t, liars)) is None:
            raise SecAggFailed(f"round {rnd}: the shares of client {of}'s {kind} disagree and no single wrong "
                               f"share explains it (suspects so far: {sorted(liars)})")
        return secret

    def finish(self, rnd: int, updates: list[ClientUpdate], global_params: dict[str, np.ndarray],
               failures: list[Failure]) -> ClientUpdate:
        """Stage 4 and the unmasking: the round's mean update, as one ClientUpdate."""
        st = self.rounds.pop(rnd)
        t, pks = st["t"], st["pks"]
        u2 = sorted(u.client for u in updates)
        dropped = sorted(set(pks) - set(u2))
        if len(u2) < t:
            raise SecAggFailed(f"round {rnd}: {len(u2)} masked updates, secagg needs {t}")
        opts = {j: self._opts(rnd, step="unmask", pks=pks, inbox=st["inbox"][j], survivors=u2, dropped=dropped)
                for j in u2}
        shares = self._stage(rnd, u2, opts, failures, lambda c, out: _unmask_answer(out, u2, dropped))
        blamed = sorted({i for s in shares.values() for i in s["unreadable"]})
        for i in blamed:  # its shares did not decrypt at a peer: it misbehaved (recorded; its own answer stays)
            peers = sorted(j for j, s in shares.items() if i in s["unreadable"])
            failures.append(Failure.of(i, self.sites[i], f"secagg share: its shares to clients {peers} did not "
                                       "decrypt or were not what it claimed"))
        if len(shares) < t:
            raise SecAggFailed(f"round {rnd}: {len(shares)} clients answered the unmasking, secagg needs {t}")
        flat = self._unmasked(rnd, updates, shares, pks, t, failures)
        examples = flat[-1]
        # a wrong share (a client lying in the unmasking) leaves a random ring element here
        if not (0 < examples <= len(u2) * MAX_EXAMPLES) or abs(examples - round(examples)) > 1e-3:
            raise SecAggFailed(f"round {rnd}: the unmasked example count is {examples:.6g}, not a count of examples "
                               f"(a share was wrong{'; suspects: ' + str(blamed) if blamed else ''})")
        return ClientUpdate(client=-1, site="secagg", round=rnd, num_examples=int(round(examples)),
                            params=self._mean(flat, examples, global_params, st["names"]))

    def _unmasked(self, rnd: int, updates: list[ClientUpdate], shares: dict[int, Any], pks: dict[int, bytes],
                  t: int, failures: list[Failure]) -> np.ndarray:
        """The sum of the survivors' inputs: their masked vectors added, every self mask and the
        pairwise masks of the dropped removed; a client whose shares lied is recorded."""
        u2 = sorted(u.client for u in updates)
        n = updates[0].params["masked"].size
        total = np.zeros(n, np.uint64)
        for u in updates:
            total += u.params["masked"]
        liars: set[int] = set()
        for i in u2:  # self masks
            total -= sa.prg(self._secret(shares, "b", i, t, rnd, liars), n)
        for d in sorted(set(pks) - set(u2)):  # pairwise masks a dropped client left in the survivors' updates
            sk = self._secret(shares, "sk", d, t, rnd, liars)
            for j in u2:
                m = sa.prg(sa.pair_seed(sk, pks[j], rnd), n)
                total = total - m if j < d else total + m  # j added +m when j < d
        for j in sorted(liars):
            failures.append(Failure.of(j, self.sites[j], "secagg unmask: it returned shares that disagree with "
                                       "every other client's (a wrong share); the secrets were rebuilt without it"))
        return sa.from_ring(total, self.spec.frac_bits)

    @staticmethod
    def _mean(flat: np.ndarray, examples: float, global_params: dict[str, np.ndarray],
              names: list[str]) -> OrderedDict[str, np.ndarray]:
        params, off = OrderedDict(), 0
        for name, g in global_params.items():
            if name in names:
                k = g.size
                mean = flat[off:off + k].reshape(g.shape) / examples
                params[name] = (np.asarray(g, np.float64) + mean).astype(g.dtype)
                off += k
            else:
                params[name] = g
        return params
