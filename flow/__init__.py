"""The driver: job config, round loop, strategies, checkpoints and the CLI."""
