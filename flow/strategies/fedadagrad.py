"""FedAdagrad: Adagrad on the server (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

``v <- v + delta^2``: the step size of each coordinate shrinks with the sum of its past squared
pseudo-gradients. The paper's Algorithm 2 keeps the first moment with beta_1; set beta_1 to 0 for
the classic Adagrad step. The shared step is in flow/strategies/fedopt.py.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedgrid.flow.strategies.fedopt import FedOpt, FedOptOptions


class FedAdagradOptions(FedOptOptions):
    name: Literal["fedadagrad"] = "fedadagrad"


class FedAdagrad(FedOpt):
    name = "fedadagrad"
    Options = FedAdagradOptions

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq
