"""FedYogi: Yogi on the server (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

``v <- v - (1 - beta_2) * delta^2 * sign(v - delta^2)``: unlike Adam, v grows or shrinks by a
step proportional to delta^2 rather than decaying toward it, so one large round cannot inflate it
all at once. The shared step is in flow/strategies/fedopt.py.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedgrid.flow.strategies.fedopt import FedOpt, FedOptOptions


class FedYogiOptions(FedOptOptions):
    name: Literal["fedyogi"] = "fedyogi"


class FedYogi(FedOpt):
    name = "fedyogi"
    Options = FedYogiOptions

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1 - self.opts.beta_2) * delta_sq * np.sign(v - delta_sq)
