"""The two errors of a run that the scripts turn into exit codes of their own (karma/cli.py:
run_main): a run stopped by its divergence guard exits 1, a run refused an --out that another run
holds exits 2 with a one-line message."""


class TrainingDiverged(RuntimeError):
    """Training stopped because its numbers left any sane range (the message says which and where
    the last good checkpoint is)."""


class RunLocked(RuntimeError):
    """Another live run writes into the same output directory."""
