"""Checkpoints that appear complete or not at all.

Lightning's default writer (through fsspec) stages the file in ``$TMPDIR`` and moves it into place:
across filesystems the move is a copy, so a full disk leaves a half-written checkpoint under its
final name, and ``last.ckpt`` can point at it. Here a local checkpoint is written beside its final
place as ``.NAME.tmp``, flushed to disk, then renamed — a rename within one folder is atomic — and a
failed write removes the partial file and says which checkpoint could not be written and why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from casm.errors import CheckpointWriteError


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before its rename: ``.NAME.tmp`` beside it."""
    return path.with_name(f".{path.name}.tmp")


def stale_partials(folder: Path) -> list[Path]:
    """Partial checkpoints a killed write (kill -9, power loss) left in ``folder``."""
    return sorted(folder.glob(".*.ckpt.tmp"))


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage: its own transactions apply
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(path)
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except BaseException as err:
            partial.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise CheckpointWriteError(err.errno, f"could not write checkpoint {path} ({err.strerror or err}); "
                                           f"nothing was written under that name: free space in {path.parent} or "
                                           f"set logging.out_dir elsewhere") from err
            raise
