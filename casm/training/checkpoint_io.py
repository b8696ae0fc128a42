"""Lightning's checkpoint writer, made atomic and aware of the pool's snapshot files; and the callback
that names and prunes a run's checkpoints.

Lightning's default writer (through fsspec) stages the file in ``$TMPDIR`` and moves it into place:
across filesystems the move is a copy, so a full disk leaves a half-written checkpoint under its
final name, and ``last.ckpt`` can point at it. Here every local write goes through
:func:`casm.checkpoints.write_atomically`. A casm checkpoint names its pool snapshots instead of
holding them; after each write and each deletion (``save_top_k``), snapshots no checkpoint names any
more are removed (:class:`casm.checkpoints.SnapshotFiles`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from casm.checkpoints import POOL_FOLDER, SnapshotFiles, run_folder, write_atomically


def _snapshot_files(path: Path) -> SnapshotFiles:
    return SnapshotFiles(run_folder(path) / POOL_FOLDER)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage: its own transactions apply
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        write_atomically(path, lambda f: torch.save(checkpoint, f))
        files = checkpoint.get("casm_state", {}).get("pool", {}).get("files")
        if files is not None:
            snapshots = _snapshot_files(path)
            snapshots.record(path, files)
            snapshots.collect(path.parent)

    def remove_checkpoint(self, path: str | Path) -> None:
        super().remove_checkpoint(path)
        if "://" in str(path):
            return
        snapshots = _snapshot_files(Path(path))
        if snapshots.index.is_file():
            snapshots.collect(Path(path).parent)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for files named ``PREFIX<number>.ckpt`` (``epoch006``, ``step0000300``)
    that keeps exactly the ``save_top_k`` highest numbers in the folder and never writes ``last-v1.ckpt``.

    Lightning keeps its top-k list in the checkpoint and forgets it when the run folder was moved, and a
    checkpoint's own file is never in the list it holds, so after a resume older files stayed forever; and
    with that list gone it wrote ``last-v1.ckpt`` beside a ``last.ckpt`` still pointing at the old epoch,
    so resuming from ``last.ckpt`` again went back in time. Here the folder itself is the list, and a
    file of the same name (``last.ckpt``, or a step that a resumed run reaches again) is replaced."""

    def __init__(self, prefix: str, digits: int, **kwargs: Any) -> None:
        super().__init__(filename=f"{prefix}{{{prefix}:0{digits}d}}", auto_insert_metric_name=False,
                         enable_version_counter=False, **kwargs)
        self.pattern = re.compile(rf"{prefix}(\d+)\.ckpt")

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and self.save_top_k > 0:
            numbered = [(int(m.group(1)), p) for p in Path(filepath).parent.iterdir()
                        if (m := self.pattern.fullmatch(p.name)) and not p.is_symlink()]
            for _, old in sorted(numbered, reverse=True)[self.save_top_k:]:
                trainer.strategy.remove_checkpoint(old)
