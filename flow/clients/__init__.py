"""Who takes part in a round and how much work each does: per-client profiles learned from past
rounds, selection (random or deadline-aware), pacing (local steps sized to the deadline), and the
memory of last updates that stands in for absent clients."""
