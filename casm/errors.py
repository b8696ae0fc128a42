"""Errors the command line reports in one line (no heavy imports: the CLI loads this first)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a read-only folder); nothing was left under its name."""


class NonFiniteLossError(RuntimeError):
    """Training stopped: the loss stayed NaN/inf for ``casm.max_nonfinite_steps`` consecutive steps."""


class TrainingDivergedError(NonFiniteLossError):
    """Training stopped: the loss stayed above ``casm.divergence_loss`` (finite but exploding weights);
    the weights of that moment are not saved."""


def shorten(text: object, limit: int = 300) -> str:
    """One line of at most ``limit`` characters that keeps both ends (the useful part of a long error
    message is often its end: the key or file at fault)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else f"{text[: limit // 2 - 2]} ... {text[-(limit // 2 - 3):]}"
