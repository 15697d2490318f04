"""Privacy on the driver side: client-level differential privacy with its accountant (:mod:`.dp`)
and secure aggregation's key and share relay and unmasking (:mod:`.secagg`). The site halves are in
:mod:`fedgrid.apps.privacy` and :mod:`fedgrid.apps.secagg`."""
