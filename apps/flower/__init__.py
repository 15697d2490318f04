"""Flower apps at a fedgrid site, unchanged (``client: {flower: pkg.module:app}``).

A Flower ``ClientApp`` is what many federated-learning teams already have. Flower runs it behind a
SuperLink and SuperNodes (network services), or in its Ray simulation. fedgrid calls the same
object in-process inside its own Parsl workers instead: the app gets a Flower ``Message`` and
``Context`` built as Flower's runtime builds them, and its reply becomes a fedgrid update, so the
app keeps its code while the run gets fedgrid's sites, tolerance, checkpoints and exact resume.

- :mod:`.client`: ``FlowerClient``, a fedgrid client (apps/client.py) that wraps one app for one
  client; its ``Context.state`` is the client's state (apps/sitestate.py);
- :mod:`.records`: params, settings, metrics and state to and from Flower's records;
- :mod:`.app`: what kind of app an object is, for ``fedgrid check`` and for the adapter.

``flwr`` is an optional extra (``pip install 'fedgrid[flower]'``), imported only by a job that
names a Flower app.
"""
