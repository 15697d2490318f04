"""``fedgrid.client``: the API for your own training code at the sites (see apps/client.py and
the README's "Write your own client")."""

from fedgrid.apps.client import HOOKS, Client, Context, Evaluation, Fit, Params, Work, load_torch_params, torch_params

__all__ = ["HOOKS", "Client", "Context", "Evaluation", "Fit", "Params", "Work", "load_torch_params", "torch_params"]
