"""What a named Flower object is, and whether fedgrid can run it: for ``fedgrid check`` and the adapter.

fedgrid replaces Flower's ServerApp and sends each client two kinds of message, ``train`` and
(with federated evaluation) ``evaluate``. So an app fedgrid can run is a ``ClientApp`` with a
default train handler (the Message API), or one built from a ``client_fn`` (the legacy API, whose
``NumPyClient``/``Client`` answers both); handlers for other actions would never be called, and
are refused rather than silently ignored. Flower offers no public way to list an app's handlers,
so the two private attributes read here are read nowhere else.
"""

from __future__ import annotations

import os
from typing import Any

SENT = ("train.default", "evaluate.default", "query.default")  # what fedgrid sends (query: never, but allowed)


def flwr_imported() -> Any:
    """flwr, with its telemetry off (runs are offline; it is read when flwr is first imported)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import flwr

    return flwr


def is_legacy(app: Any) -> bool:
    """Built from ``client_fn`` (NumPyClient / Client), not with @app.train() handlers."""
    return getattr(app, "_call", None) is not None


def handlers(app: Any) -> set[str]:
    """The Message API handlers an app registered, as ``category.action``."""
    return set(getattr(app, "_registered_funcs", {}) or {})


def refusal(app: Any, path: str, evaluates: bool, initial: str | None) -> tuple[str, str] | None:
    """Why fedgrid cannot run `app` for this job, as (key, expectation), or None when it can."""
    flwr_imported()
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    if isinstance(app, ServerApp):
        return "client.flower", (f"{path} is a ServerApp; fedgrid runs the rounds itself (its strategy and round "
                                 "blocks), so name the ClientApp")
    if not isinstance(app, ClientApp):
        return "client.flower", f"{path} is a {type(app).__name__}, expected a flwr.clientapp.ClientApp"
    if is_legacy(app):
        return None
    have = handlers(app)
    if other := sorted(have - set(SENT)):
        return "client.flower", (f"{path} registers {other[0]!r}, a message fedgrid never sends (it sends "
                                 "train and evaluate with the default action)")
    if "train.default" not in have:
        return "client.flower", f"{path} has no @app.train() handler; expected one (fedgrid sends it each round)"
    if evaluates and "evaluate.default" not in have:
        return "round.federated_every", (f"{path} has no @app.evaluate() handler; expected one for federated "
                                         "evaluation, or 0 here")
    if initial is None:
        return "client.initial", ("expected package.module:function returning the initial arrays (an ArrayRecord, "
                                  "a torch state_dict or numpy arrays): a Message API app gets its first model "
                                  "from the ServerApp, which fedgrid replaces")
    return None
