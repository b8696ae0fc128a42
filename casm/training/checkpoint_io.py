"""Lightning's checkpoint writer, made atomic and aware of the pool's snapshot files.

Lightning's default writer (through fsspec) stages the file in ``$TMPDIR`` and moves it into place:
across filesystems the move is a copy, so a full disk leaves a half-written checkpoint under its
final name, and ``last.ckpt`` can point at it. Here every local write goes through
:func:`casm.checkpoints.write_atomically`. A casm checkpoint names its pool snapshots instead of
holding them; after each write and each deletion (``save_top_k``), snapshots no checkpoint names any
more are removed (:class:`casm.checkpoints.SnapshotFiles`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from casm.checkpoints import POOL_FOLDER, SnapshotFiles, write_atomically


def _snapshot_files(path: Path) -> SnapshotFiles:
    return SnapshotFiles(path.parent.parent / POOL_FOLDER)  # RUN/checkpoints/x.ckpt -> RUN/pool


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
