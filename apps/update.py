"""ClientUpdate: what a train app sends back to the driver (DESIGN.md, Contracts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedgrid.apps.store import Ref, fetch


@dataclass
class ClientUpdate:
    """One client's answer for one round.

    `params` are the client's new weights, or empty with `ref` pointing at them in the store when
    they were too large to send back inline (the driver fetches and verifies them: `resolve`).
    `timings` holds seconds: queue (submit to start), load, train, upload, total. `extras` carries
    strategy-specific payloads (control variates, step counts).
    """

    client: int
    site: str
    round: int
    num_examples: int
    params: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
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
