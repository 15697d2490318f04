"""ClientUpdate and Failure: a client's outcome for a round, as the driver records it
(docs/ARCHITECTURE.md, Contracts)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fedgrid.apps.records import Extras, FailureRow
from fedgrid.apps.store import Ref, fetch
from fedgrid.apps.wire import FastPickle


@dataclass
class ClientUpdate(FastPickle):
    """One client's answer for one round.

    `params` are the client's new weights, or empty with `ref` pointing at them in the store when
    they were too large to send back inline (the driver fetches and verifies them: `resolve`).
    `timings` holds seconds: queue (submit to start), load, train, upload, total. `extras` carries
    the step count, the worker's labels, the client state version and strategy payloads (control
    variates): apps/records.py `Extras`, a dict on the wire, checked by the driver before use. It
    goes back to the driver as one C-pickled string (apps/wire.py): Parsl's dill would pickle it
    in pure Python.
    """

    client: int
    site: str
    round: int
    num_examples: int
    params: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extras: Extras = field(default_factory=Extras)
    ref: Ref | None = None
    staleness: int = 0  # rounds between the global model it trained from and the one it joins
    scale: float = 1.0  # aggregation weight multiplier (a carried late update weighs less)
    codec: str = "none"  # params hold an encoded delta until `decode` (apps/codec.py)
    wire_nbytes: int = 0  # bytes the client sent (the encoded payload), kept after decoding

    def nbytes(self) -> int:
        if self.wire_nbytes:
            return self.wire_nbytes
        return self.ref.nbytes if self.ref is not None else int(sum(a.nbytes for a in self.params.values()))

    def decode(self, base: dict[str, np.ndarray]) -> ClientUpdate:
        """An encoded delta back into params, against the global model the client trained from."""
        if self.codec not in ("none", "secagg"):  # a masked update is unmasked only in the sum
            from fedgrid.apps.codec import decode

            self.wire_nbytes = self.wire_nbytes or self.nbytes()
            self.params = decode(self.params, base, self.codec)
            self.codec = "none"
        return self

    def resolve(self) -> ClientUpdate:
        """Fetch by-reference params into `params` (verified against the ref's size and sha256)."""
        if self.ref is not None and not self.params:
            self.params = fetch(self.ref)
        return self


@dataclass
class ClientEvaluation(FastPickle):
    """One client's evaluation of a global model on its own held-out data (federated evaluation)."""

    client: int
    site: str
    round: int
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def resolve(self) -> ClientEvaluation:  # (the gather's accept hook treats it like an update)
        return self


# a reason longer than this is cut: rows stay small and a site cannot flood the rounds table
REASON_MAX = 300


@dataclass(frozen=True)
class Failure:
    """A client that did not contribute to a round, and why, in words a user can act on.

    Every place that gives up on a client (the gather, the asynchronous loop, selection's skips,
    secure aggregation's stages) builds one through :meth:`of`, so the reason is always a short
    string whatever the site raised. ``client`` is -1 for a failure of the round itself."""

    client: int
    site: str
    reason: str

    @classmethod
    def of(cls, client: int, site: str, why: BaseException | str) -> Failure:
        """From an exception (its type and message) or a reason already in words. The client
        code's own traceback (ClientCodeError) goes to the log whole; the reason keeps its gist."""
        named = isinstance(why, BaseException) and not getattr(why, "plain", False)
        text = (f"{type(why).__name__}: {why}" if named else str(why)).strip()
        if (tb := getattr(why, "remote_traceback", None)) is not None:
            logging.getLogger("fedgrid").warning("client %s at %s failed in its client code:\n%s", client, site, tb)
        return cls(int(client), str(site), text if len(text) <= REASON_MAX else text[:REASON_MAX - 3] + "...")

    def row(self) -> FailureRow:
        """As the rounds table stores it."""
        return {"client": self.client, "site": self.site, "reason": self.reason}
