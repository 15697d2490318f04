"""What outlives a round: the verified Arrow checkpoints and rounds table, the run directory's lock
and orphan reaping, and the data plane (how params travel: inline or through the store)."""
