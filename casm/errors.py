"""Errors the command line reports in one line (no heavy imports: the CLI loads this first)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a read-only folder); nothing was left under its name."""


class NonFiniteLossError(RuntimeError):
    """Training stopped: the loss stayed NaN/inf for ``casm.max_nonfinite_steps`` consecutive steps."""


class TrainingDivergedError(NonFiniteLossError):
    """Training stopped: the loss stayed above ``casm.divergence_loss`` (finite but exploding weights);
    the weights of that moment are not saved."""
