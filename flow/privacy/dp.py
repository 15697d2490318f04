"""Client-level differential privacy for a run: DP-FedAvg and its accountant.

`privacy: {mode: central, clip: C, noise_multiplier: z, delta: 1e-5, epsilon_budget: 8}`

- **central** (McMahan et al. 2018, DP-FedAvg): the driver, trusted, clips every client's delta to
  L2 norm C and averages the clients with equal weight (example counts would let one client
  weigh more than its bound); the average gets Gaussian noise of std ``z * C / m`` for m clients.
  The noise is added to each clipped update with std ``z * C / sqrt(m)``, which gives the mean
  exactly that noise and lets any mean-based server optimiser (FedAvgM, FedAdam, ...) run on top
  unchanged.
- **local**: each site clips and noises its own update with std ``z * C`` before it leaves, so the
  driver never sees a clean one; the same equal-weight mean follows.
- with ``round.aggregate: site`` (central): each site's aggregator clips its clients' deltas and
  takes their equal-weight mean; the driver adds the noise to the site means. The trust model
  widens by one party: a site's aggregator sees its own clients' updates before any noise, as the
  driver does in flat rounds. It never sees another site's. Local DP is unchanged: the noise is
  added where each client trains, and neither the site aggregator nor the driver sees a clean update.

Statistics buffers (apps/kinds.py: BatchNorm's running mean and variance) are part of the update
and are clipped and noised with it, in both modes: the bound C and the noise cover the whole vector
that leaves a site, so the guarantee covers everything a client's data shaped, not only the weights
(a running mean is an average of that data). The server then takes the noised equal-weight mean as
the statistics, with no server step (`Strategy.statistics`); counters, integers outside the
clipped vector, are averaged and rounded. The noise also reaches the statistics: with
``z * C / m`` near the smallest running variance a noised variance can come out negative, so a
model with BatchNorm needs that noise well below its variances (or GroupNorm, which keeps none).

After every round the RDP accountant of Opacus (Mironov 2017; subsampled Gaussian, Mironov et al.
2019) turns the rounds so far -- noise multiplier z, sampling rate q = clients per round / clients
-- into epsilon for the job's delta. Each round's z, q and epsilon are in rounds.parquet
(``dp_noise``, ``dp_sample_rate``, ``dp_epsilon``), which is also what a resumed run rebuilds its
accountant from. With ``epsilon_budget``, a round whose epsilon would pass the budget is not
started: the run ends there, having spent at most the budget.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedgrid.apps.privacy import clip_and_noise
from fedgrid.apps.records import LocalDp, RoundRow
from fedgrid.apps.update import ClientUpdate
from fedgrid.flow.config import ConfigError, Job, PrivacySpec
from fedgrid.flow.persist.table import read_rows


def rdp_accountant() -> Any:
    """Opacus's RDPAccountant class. Importing opacus calls logging.basicConfig, which would send
    every library's log (Parsl's included) to stderr: a placeholder handler on the root logger
    makes that call a no-op, and the root logger is put back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.addHandler(logging.NullHandler())
    try:
        from opacus.accountants import RDPAccountant
    except ImportError:
        raise ConfigError("<job>", "privacy", "the privacy extra: pip install 'fedgrid[privacy]' "
                                              "(Opacus's RDP accountant)") from None
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    return RDPAccountant


class BudgetSpent(Exception):
    """The next round would take epsilon past privacy.epsilon_budget."""


def sample_rate(job: Job) -> float:
    """The accountant's q. Central mode: the driver, trusted, samples clients uniformly at random
    (round.select: random), so amplification by sampling applies: clients per round / clients.
    Local mode protects each client from the driver, which chooses the sample: no amplification
    (q = 1)."""
    assert job.privacy is not None
    if job.privacy.mode == "local":
        return 1.0
    return min(1.0, job.clients_per_round() / job.data.clients)


def history_of(row: dict[str, Any] | None, run_dir: Path) -> list[tuple[float, float, int]]:
    """The accountant's steps so far: the newest checkpoint's own record (it survives a lost or
    pruned rounds table), or else rebuilt from the rounds table (runs from before it was recorded)."""
    if row and row.get("dp_history") is not None:
        return [(float(z), float(q), int(n)) for z, q, n in row["dp_history"]]
    upto = int(row["round"]) if row else 0
    return [(r["dp_noise"], r["dp_sample_rate"], 1) for r in read_rows(run_dir)
            if r.get("dp_noise") is not None and r["round"] <= upto]


class Privacy:
    def __init__(self, job: Job, run_dir: Path, last_row: dict[str, Any] | None = None):
        self.Accountant = rdp_accountant()
        assert job.privacy is not None  # made only for a job with privacy
        self.spec: PrivacySpec = job.privacy
        self.q = sample_rate(job)
        self.acc = self.Accountant()
        self.acc.history = history_of(last_row, run_dir)
        # the noise comes from the OS's entropy, never from the job's seed, which every site holds:
        # a site with two consecutive global models could otherwise regenerate and subtract it, and
        # a round run again after a crash would repeat a draw the accountant counted once
        self.rng = np.random.default_rng()

    def epsilon(self) -> float:
        return float(self.acc.get_epsilon(self.spec.delta)) if self.acc.history else 0.0

    def check_budget(self, rnd: int) -> None:
        """Raise BudgetSpent when round `rnd` would take epsilon past the budget."""
        if self.spec.epsilon_budget is None:
            return
        trial = self.Accountant()
        trial.history = [*self.acc.history, (self.spec.noise_multiplier, self.q, 1)]
        after = float(trial.get_epsilon(self.spec.delta))
        if after > self.spec.epsilon_budget:
            raise BudgetSpent(f"privacy budget: round {rnd} would reach epsilon {after:.2f} > "
                              f"privacy.epsilon_budget {self.spec.epsilon_budget:g} (spent {self.epsilon():.2f})")

    def prepare(self, rnd: int, global_params: dict[str, np.ndarray], updates: list[ClientUpdate]) -> None:
        """Equal weights for every client; central mode also clips and noises each update.

        Under round.aggregate: site a contribution is a site's mean of k clients, each clipped at
        the site and weighed 1 there (``extras["clients"]`` = k, its weight here too); it gets noise
        of std ``z * C / sqrt(m * k)``, which gives the mean over all m clients the same
        ``z * C / m`` as in flat rounds."""
        m = sum(int(u.extras.get("clients", 1)) for u in updates)
        rng = self.rng
        for u in sorted(updates, key=lambda u: (u.client, u.site)):
            k = u.extras.get("clients")
            if k is None:
                u.scale = 1.0 / max(u.num_examples, 1)  # weight num_examples * scale = 1
            if self.spec.mode == "central" and m:
                std = self.spec.noise_multiplier * self.spec.clip / np.sqrt(m * (k or 1))
                u.params, _ = clip_and_noise(u.params, global_params, np.inf if k else self.spec.clip, std, rng)

    def record(self, row: RoundRow) -> None:
        """Account for the round just aggregated and write z, q and epsilon into its row."""
        self.acc.step(noise_multiplier=self.spec.noise_multiplier, sample_rate=self.q)
        # the whole history goes into the round file with its row (run-length: (z, q, steps))
        row.update({"dp_noise": self.spec.noise_multiplier, "dp_sample_rate": self.q, "dp_epsilon": self.epsilon(),
                    "dp_history": [list(h) for h in self.acc.history]})

    def task_options(self) -> LocalDp | None:
        """What a site needs for local DP (none in central mode)."""
        if self.spec.mode != "local":
            return None
        return LocalDp(clip=self.spec.clip, std=self.spec.noise_multiplier * self.spec.clip)
