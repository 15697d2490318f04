"""``fedgrid.client``: the API for your own training code at the sites (see apps/client.py and
docs/guide/client-api.md)."""

from fedgrid.apps.client import (
    HOOKS,
    Base,
    Client,
    Context,
    Evaluation,
    Fit,
    Params,
    Work,
    load_torch_params,
    load_trainable,
    torch_params,
    trainable_params,
)

__all__ = ["HOOKS", "Base", "Client", "Context", "Evaluation", "Fit", "Params", "Work", "load_torch_params",
           "load_trainable", "torch_params", "trainable_params"]
