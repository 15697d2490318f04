"""FedAdam: Adam on the server (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

``v <- beta_2 * v + (1 - beta_2) * delta^2``; the shared step is in flow/strategies/fedopt.py.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedgrid.flow.strategies.fedopt import FedOpt, FedOptOptions


class FedAdamOptions(FedOptOptions):
    name: Literal["fedadam"] = "fedadam"


class FedAdam(FedOpt):
    name = "fedadam"
    Options = FedAdamOptions

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.opts.beta_2 * v + (1 - self.opts.beta_2) * delta_sq
