"""Clients that are wrong in the ways a user's first try is: for the error paths."""

from __future__ import annotations

from numpy_client import NumpyLogReg


class RaisesForClient2(NumpyLogReg):
    """Client 2's training raises: that client fails with its traceback, the round goes on."""

    def train(self, params, work):
        if self.ctx.client == 2:
            raise ValueError("client 2 cannot read its data shard")
        return super().train(params, work)


class NoTrain:
    """Has init_params but no train."""

    def __init__(self, ctx):
        self.ctx = ctx

    def init_params(self):
        return {}


def no_arg_factory():
    """A model factory that takes no arguments (its shapes are its own)."""
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def bad_factory(width, depth):
    """A model factory whose arguments fedgrid cannot supply."""
    raise AssertionError("never called")


def raising_factory(input_shape, num_classes):
    """A model factory that fails when the driver builds the model."""
    raise RuntimeError(f"no layer for {num_classes} classes")


class CountsThreads(NumpyLogReg):
    """Records the torch threads its constructor and its train saw (train.threads is fedgrid's)."""

    seen: list[int] = []

    def __init__(self, ctx):
        import torch

        super().__init__(ctx)
        CountsThreads.seen.append(torch.get_num_threads())

    def train(self, params, work):
        import torch

        CountsThreads.seen.append(torch.get_num_threads())
        return super().train(params, work)
