"""ClientUpdate: what a train app sends back to the driver (DESIGN.md, Contracts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ClientUpdate:
    """One client's answer for one round.

    `params` are the client's new weights (inline for now; the data plane will send a Ref instead
    when they are large). `timings` holds seconds: queue (submit to start), load, train, total.
    `extras` carries strategy-specific payloads (control variates, step counts).
    """

    client: int
    site: str
    round: int
    num_examples: int
    params: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.params.values()))
