"""The round loop: run a job's rounds (or FedBuff's server steps) across its sites.

`runner.run` is the entry point. A round selects clients (:mod:`fedgrid.flow.clients`), sends one
train task per client to its site (:mod:`.sites`), waits for them with a quorum and a deadline
(:mod:`.gather`), checks what came back (:mod:`.validate`), aggregates
(:mod:`fedgrid.flow.strategies`) and hands the round to the background writer
(:mod:`fedgrid.flow.persist`).
"""
