"""Secure aggregation, the driver side: run the protocol's rounds and unmask the sum.

`secagg: {threshold: 0.5}` in the job. The site side, and what each stage does, is in
apps/secagg.py; here the driver sends each stage's task to every client's site (Parsl apps, like
training), relays public keys and encrypted shares, and at the end removes the masks from the sum
of the masked updates: the self masks of the clients whose update arrived (their ``b`` rebuilt
from t shares) and the pairwise masks that a client dropped after stage 2 left in the others'
updates (its secret key rebuilt from t shares). A client lost in stage 1 or 2 is simply not in
the masking; one lost later is recovered as long as t clients answer the unmasking.

The result is one update: ``G + sum(n_i * delta_i) / sum(n_i)`` -- FedAvg's mean -- which the
strategy (FedAvg, FedAvgM, FedAdam, ...) then takes as the round's aggregate. Under
``round.aggregate: site`` the masking group is each site's clients: their masked vectors stay in
the site, where its aggregator adds them (it sees only masked vectors) and sends the one sum; the
driver runs one unmasking stage for every site and gets each site's mean, never a client's. The driver never
holds an individual update, so per-update validation cannot run; a job with
``round.max_update_norm`` and secure aggregation is refused.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, cast

import numpy as np

from fedgrid.apps import checks
from fedgrid.apps import secagg as sa
from fedgrid.apps.checks import MAX_EXAMPLES
from fedgrid.apps.codec import is_float
from fedgrid.apps.records import SecaggOptions, SecaggStep
from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.config import Job


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
        # the sites' key directory is named with this: another local user who cannot read the
        # tasks cannot guess it, so cannot take it first (and fail every round) or plant a link there
        self.nonce = secrets.token_hex(16)
        self.rounds: dict[int, dict[str, Any]] = {}

    def threshold(self, m: int) -> int:
        return max(2, math.ceil(self.spec.threshold * m))

    def _opts(self, rnd: int, **more: Any) -> SecaggOptions:
        # (each stage's own keys in `more`: apps/records.SecaggOptions says which)
        return cast(SecaggOptions, {"run_id": self.run_id, "nonce": self.nonce, "key_dir": self.spec.key_dir,
                                    "frac_bits": self.spec.frac_bits, **more})

    def _stage(self, rnd: int, clients: list[int], opts: dict[int, SecaggOptions],
               failures: list[Failure], well_formed: Callable[[int, Any], bool]) -> dict[int, Any]:
        """Run one site step for `clients`; their answers, and a failure row for each that did not
        answer or answered something malformed (`well_formed(client, answer)`): one client's bad
        message must cost that client, never the round."""
        futs: dict[Future, int] = {}
        for c in clients:
            task: SecaggStep = {"client": c, "site": self.sites[c], "round": rnd, "secagg": opts[c]}
            futs[self.runtime.call(self.sites[c], task)] = c
        out: dict[int, Any] = {}
        why: dict[int, BaseException] = {}
        try:
            for fut in as_completed(futs, timeout=self.job.round.deadline_s):
                c = futs[fut]
                if (err := fut.exception()) is not None:
                    why[c] = err
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

    def setup(self, rnd: int, clients: list[int], global_params: dict[str, np.ndarray],
              by_site: bool = False) -> tuple[list[int], list[Failure], dict[int, SecaggOptions]]:
        """Stages 1 and 2. Returns the clients in the masking, the failures, and each one's train
        instructions (its group's public keys). The masking group is the round's clients, or under
        round.aggregate: site each site's own: a site whose clients fall short of its threshold is
        left out of the round (its clients' failures), the others go on."""
        names = [k for k, v in global_params.items() if is_float(v)]
        failures: list[Failure] = []
        label = {c: self.sites[c] if by_site else "" for c in clients}
        groups = {g: [c for c in clients if label[c] == g] for g in sorted(set(label.values()))}
        t = {g: self.threshold(len(m)) for g, m in groups.items()}
        pks = self._stage(rnd, clients, {c: self._opts(rnd, step="keys") for c in clients}, failures,
                          lambda c, pk: isinstance(pk, bytes) and len(pk) == 32)
        ids = self._enough(rnd, groups, t, pks, "published keys", failures)
        shared = self._stage(rnd, sorted(c for m in ids.values() for c in m),
                             {c: self._opts(rnd, step="share", pks={i: pks[i] for i in ids[label[c]]}, t=t[label[c]])
                              for m in ids.values() for c in m}, failures,
                             lambda c, out: _share_map(out, ids[label[c]]))
        u1 = self._enough(rnd, ids, t, shared, "shared keys", failures)
        self.rounds[rnd] = {"size": sum(int(global_params[k].size) for k in names) + 1, "names": names, "groups": {
            g: {"pks": {c: pks[c] for c in m}, "inbox": {j: {i: shared[i][j] for i in m} for j in m}, "t": t[g]}
            for g, m in u1.items()}}
        train = {c: self._opts(rnd, step="mask", pks={i: pks[i] for i in m}, names=names, t=t[g])
                 for g, m in u1.items() for c in m}
        return sorted(train), failures, train

    def _enough(self, rnd: int, groups: dict[str, list[int]], t: dict[str, int], answered: dict[int, Any],
                what: str, failures: list[Failure]) -> dict[str, list[int]]:
        """The groups with at least their threshold of clients that `answered`, each with those
        clients. One group: too few fails the round (SecAggFailed). Per site: that site's clients
        are this round's failures, and only when no site is left does the round fail."""
        out: dict[str, list[int]] = {}
        for g, members in groups.items():
            ok = sorted(c for c in members if c in answered)
            if len(ok) >= t[g]:
                out[g] = ok
                continue
            why = f"round {rnd}: {len(ok)} clients{' of site ' + g if g else ''} {what}, secagg needs {t[g]}"
            if cause := next((f for f in failures if f.client in members), None):
                why += f" (client {cause.client}: {cause.reason})"  # the real cause, not only in parsl.log
            if not g:
                raise SecAggFailed(why)
            failures.extend(Failure.of(c, g, f"secagg: {why}") for c in ok)
        if not out:
            raise SecAggFailed(f"round {rnd}: no site has enough clients that {what} for secure aggregation")
        return out

    def size(self, rnd: int) -> int:
        """The masked vector's length this round: every float value and the example count."""
        return int(self.rounds[rnd]["size"])

    def check(self, rnd: int, u: ClientUpdate) -> ClientUpdate:
        """A masked update has the masked vector and nothing else (the gather's accept hook)."""
        size = self.size(rnd)
        if u.codec != "secagg":
            raise checks.InvalidUpdate(f"rejected: codec {str(u.codec)[:20]!r}, expected a masked update (secagg)")
        u.wire_nbytes = int(checks.masked(u.params, size).nbytes)  # (the site aggregator's rule too)
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
        names = self.rounds[rnd]["names"]
        total = np.zeros(self.size(rnd), np.uint64)
        for u in updates:
            total += u.params["masked"]
        out = self._unmask(rnd, {"": (total, sorted(u.client for u in updates))}, failures)[""]
        if isinstance(out, str):
            raise SecAggFailed(out)
        return ClientUpdate(client=-1, site="secagg", round=rnd, num_examples=int(round(out[-1])),
                            params=self._mean(out, out[-1], global_params, names))

    def unmask_sites(self, rnd: int, sums: dict[str, tuple[np.ndarray, list[int]]],
                     global_params: dict[str, np.ndarray],
                     failures: list[Failure]) -> tuple[list[ClientUpdate], dict[str, str]]:
        """round.aggregate: site: each site's sum of masked vectors (added by its aggregator, which
        learns nothing from them) unmasked here; one unmasking stage serves every site. Returns a
        contribution per site (its clients' mean) and, per site that could not be unmasked, why."""
        names = self.rounds[rnd]["names"]
        out, lost = [], {}
        for site, flat in sorted(self._unmask(rnd, sums, failures).items()):
            if isinstance(flat, str):
                lost[site] = flat
                continue
            out.append(ClientUpdate(client=-1, site=site, round=rnd, num_examples=int(round(flat[-1])),
                                    params=self._mean(flat, flat[-1], global_params, names)))
        return out, lost

    def _unmask(self, rnd: int, totals: dict[str, tuple[np.ndarray, list[int]]],
                failures: list[Failure]) -> dict[str, np.ndarray | str]:
        """Each group's sum of its survivors' inputs (`totals`: group -> masked sum, survivors),
        or why it cannot be had. One unmask stage asks every survivor of every group at once."""
        st = self.rounds.pop(rnd)
        out: dict[str, np.ndarray | str] = {}
        plan: dict[str, tuple[list[int], list[int]]] = {}
        for g, (_, u2) in totals.items():
            grp = st["groups"].get(g)
            if grp is None or len(u2) < grp["t"] or not set(u2) <= set(grp["pks"]):
                need = grp["t"] if grp else self.threshold(len(u2))
                out[g] = f"round {rnd}: {len(u2)} masked updates{' at site ' + g if g else ''}, secagg needs {need}"
                continue
            plan[g] = (u2, sorted(set(grp["pks"]) - set(u2)))
        opts, roles = {}, {}
        for g, (u2, dropped) in plan.items():
            grp = st["groups"][g]
            for j in u2:
                opts[j] = self._opts(rnd, step="unmask", pks=grp["pks"], inbox=grp["inbox"][j], survivors=u2,
                                     dropped=dropped)
                roles[j] = (u2, dropped)
        shares = self._stage(rnd, sorted(opts), opts, failures, lambda c, a: _unmask_answer(a, *roles[c]))
        for g, (u2, _) in plan.items():
            try:
                out[g] = self._removed(rnd, totals[g][0], u2, {j: shares[j] for j in u2 if j in shares},
                                       st["groups"][g], failures)
            except SecAggFailed as e:
                out[g] = str(e)
        return out

    def _removed(self, rnd: int, total: np.ndarray, u2: list[int], shares: dict[int, Any], grp: dict[str, Any],
                 failures: list[Failure]) -> np.ndarray:
        """The sum of the survivors' inputs: every self mask and the pairwise masks of the dropped
        removed from their masked sum; a client whose shares lied or did not decrypt is recorded."""
        t, pks = grp["t"], grp["pks"]
        blamed = sorted({i for s in shares.values() for i in s["unreadable"]})
        for i in blamed:  # its shares did not decrypt at a peer: it misbehaved (recorded; its own answer stays)
            peers = sorted(j for j, s in shares.items() if i in s["unreadable"])
            failures.append(Failure.of(i, self.sites[i], f"secagg share: its shares to clients {peers} did not "
                                       "decrypt or were not what it claimed"))
        if len(shares) < t:
            raise SecAggFailed(f"round {rnd}: {len(shares)} clients answered the unmasking, secagg needs {t}")
        n = total.size
        total = total.copy()
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
        flat = sa.from_ring(total, self.spec.frac_bits)
        examples = flat[-1]
        # a wrong share (a client lying in the unmasking) leaves a random ring element here
        if not (0 < examples <= len(u2) * MAX_EXAMPLES) or abs(examples - round(examples)) > 1e-3:
            raise SecAggFailed(f"round {rnd}: the unmasked example count is {examples:.6g}, not a count of examples "
                               f"(a share was wrong{'; suspects: ' + str(blamed) if blamed else ''})")
        return flat

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
