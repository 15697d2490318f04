"""`round.absent: reuse`: an absent client's last update stands in for it (MIFA).

Gu et al., "Fast Federated Learning in the Presence of Arbitrary Device Unavailability", NeurIPS
2021. When clients drop out — a flaky node, a site that is lost for good — plain FedAvg averages
only the ones that answered, and the model drifts toward their data: the absent clients' classes
are forgotten. MIFA keeps every client's latest update and lets it stand in while the client is
away. Here the update is kept as a delta (the client's params minus the global model it started
from) and added to the current global model, weighted like a carried late update by
``(1 + staleness) ** -round.staleness_exponent``, for at most ``round.max_staleness`` rounds.

The deltas are part of the round checkpoint (section ``memory``), so a resumed run aggregates
exactly as an uninterrupted one would.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.config import Job

Arrays = dict[str, np.ndarray]


class UpdateMemory:
    def __init__(self, job: Job):
        self.job = job
        self.last: dict[int, tuple[int, int, int, Arrays]] = {}  # client -> (round, examples, steps, delta)

    def remember(self, rnd: int, global_params: Arrays, updates: list[ClientUpdate]) -> None:
        """Keep each fresh update's delta from `global_params`, the model it trained from."""
        for u in updates:
            if u.staleness:
                continue
            delta = OrderedDict((k, np.asarray(u.params[k], dtype=g.dtype) - g) for k, g in global_params.items()
                                if np.issubdtype(g.dtype, np.floating))
            self.last[u.client] = (rnd, u.num_examples, int(u.extras.get("steps") or 1), delta)
        for c in [c for c, (r0, *_) in self.last.items() if rnd - r0 > self.job.round.max_staleness]:
            del self.last[c]  # too stale to stand in from the next round on: not worth checkpointing

    def stand_ins(self, rnd: int, global_params: Arrays, absent: list[int], sites: list[str]) -> list[ClientUpdate]:
        """Updates for the `absent` clients that answered within the last max_staleness rounds."""
        rs, out = self.job.round, []
        for c in absent:
            if c not in self.last or rnd - self.last[c][0] > rs.max_staleness:
                continue
            r0, n, steps, delta = self.last[c]
            params = OrderedDict((k, g + delta[k] if k in delta else g) for k, g in global_params.items())
            u = ClientUpdate(client=c, site=sites[c], round=rnd, num_examples=n, params=params,
                             extras={"steps": steps})
            u.staleness, u.scale = rnd - r0, (1.0 + rnd - r0) ** -rs.staleness_exponent
            out.append(u)
        return out

    def state(self) -> Arrays:
        out: Arrays = OrderedDict()
        for c, (r0, n, steps, delta) in sorted(self.last.items()):
            out[f"c{c:06d}/.meta"] = np.array([r0, n, steps], dtype=np.int64)
            out.update((f"c{c:06d}/{k}", v) for k, v in delta.items())
        return out

    def load(self, arrays: Arrays) -> None:
        self.last.clear()
        for key, meta in arrays.items():
            if key.endswith("/.meta"):
                prefix = key[: -len(".meta")]
                delta = OrderedDict((k[len(prefix):], v) for k, v in arrays.items()
                                    if k.startswith(prefix) and k != key)
                self.last[int(prefix[1:-1])] = (int(meta[0]), int(meta[1]), int(meta[2]), delta)
