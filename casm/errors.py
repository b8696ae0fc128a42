"""Errors the command line reports in one line (no heavy imports: the CLI loads this first).

Bad input (a config value, a file, a checkpoint) raises :class:`UserError` or one of the classes
below: the CLI prints its message on one line and exits 2. Any other exception is a bug in casm and
keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user, with a message that names the file, key or value at fault and the fix.
    (A ``ValueError`` so that library callers catching that keep working.)"""


class ExportError(UserError):
    """A folder that is not a valid masker export, or a checkpoint that cannot be exported."""


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
