"""Errors the command line reports in one line (no heavy imports: the CLI loads this first)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a read-only folder); nothing was left under its name."""
