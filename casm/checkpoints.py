"""Every file of weights casm reads or writes: checkpoints, weights files and pool snapshots.

Reading is safe by construction: ``torch.load(weights_only=True)`` or safetensors, neither of which
can run code from the file. Writing is atomic: a file is written beside its final place as
``.NAME.tmp``, flushed, then renamed (a rename within one folder is atomic), so a killed write or a
full disk never leaves a half-written file under a real name. No Lightning here: ``casm.load_masker``
and the export path import this module.

Pool snapshots (``RUN/pool/stepNNNNNNN-XXXXXXXX.safetensors``) are written once, when taken;
checkpoints hold their names and SHA-256 digests instead of copies (:class:`SnapshotFiles`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import torch
from safetensors.torch import load, load_file, save
from torch import Tensor

from casm.errors import CheckpointWriteError, UserError, shorten

POOL_FOLDER = "pool"  # RUN/pool, beside RUN/checkpoints
_REFERENCES = "references.json"  # in the pool folder: which checkpoint holds which snapshots


def run_folder(checkpoint: str | Path) -> Path:
    """The run a checkpoint belongs to: ``RUN/checkpoints/NAME.ckpt`` -> ``RUN`` (``last.ckpt``, a link, is
    followed). The one place that knows the layout (config.yaml, pool/, health.json, eval/ live in RUN)."""
    return Path(checkpoint).resolve().parent.parent


# ------------------------------------------------------------------ reading
def load_failure(err: Exception) -> str:
    """Why a safe ``torch.load`` refused a file, without torch's advice to retry with ``weights_only=False``:
    that is exactly the unsafe load that runs whatever code a crafted file carries."""
    text = " ".join(str(err).split())
    if "weights_only" in text:
        blocked = re.search(r"(Unsupported global: [^ ]+|unsupported GLOBAL [^ ]+|Unsupported operand [^ ]+)", text)
        found = f" ({blocked.group(1)})" if blocked else ""
        return (f"it holds Python objects beyond tensors{found}, which casm never unpickles (that could run code "
                f"from the file); only files of tensors, as casm and torch.save of a state dict write them, load")
    return f"{type(err).__name__}: {shorten(err)}"


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint safely (``weights_only=True``), with a one-line error on failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: not a readable casm checkpoint: {load_failure(err)}") from err


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a ``.pt``/``.pth``/``.ckpt`` (``weights_only=True``) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, unsafe globals
        raise UserError(f"{path}: cannot be read as a weights file: {load_failure(err)}") from err
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


# ------------------------------------------------------------------ writing
def partial_path(path: Path) -> Path:
    """Where ``path`` is written before its rename: ``.NAME.tmp`` beside it."""
    return path.with_name(f".{path.name}.tmp")


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints a run folder holds: epoch, step, last and interrupted ones in ``checkpoints/``, and
    the ``hpc_ckpt_N.ckpt`` Lightning writes beside them before a SLURM requeue (dangling links left out)."""
    return [p for p in [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")] if p.exists()]


def stale_partials(folder: Path) -> list[Path]:
    """Partial files a killed write (kill -9, power loss) left in ``folder``."""
    return sorted(folder.glob(".*.tmp"))


class _WatchedFile:
    """A binary file that remembers the first ``OSError`` its writes raised: torch's zip writer turns a
    failed write (a full disk) into a ``RuntimeError`` ("unexpected pos ...") that no longer says so."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str):
        return getattr(self.file, name)


TRAINING_ELSEWHERE = "set logging.out_dir elsewhere"  # a training run's files; other writers name their own key


def _write_hint(err: OSError, folder: Path, elsewhere: str) -> str:
    """What to do about a failed write, by its cause: a full disk is not a missing folder."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"free space in {folder} or {elsewhere}"
    if err.errno == errno.ENOENT:
        return f"{folder} does not exist any more (removed while writing?)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{folder} is not writable: {elsewhere}"
    return f"check {folder}, or {elsewhere}"


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None], what: str = "checkpoint",
                     elsewhere: str = TRAINING_ELSEWHERE) -> None:
    """``write(file)`` to ``path`` so that the file appears complete or not at all; a failed write is a
    :class:`CheckpointWriteError` whose message says what to do (``elsewhere``: where else to write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    watched = None
    try:
        with open(partial, "wb") as f:
            watched = _WatchedFile(f)
            write(watched)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else watched.error if watched else None
        if cause is not None:
            raise CheckpointWriteError(cause.errno, f"could not write {what} {path} ({cause.strerror or cause}); "
                                       f"nothing was written under that name: "
                                       f"{_write_hint(cause, path.parent, elsewhere)}") from err
        raise


def write_bytes_atomically(path: str | Path, data: bytes, what: str, elsewhere: str = TRAINING_ELSEWHERE) -> None:
    """A file (a report, a config, an image) that appears complete or not at all."""
    write_atomically(path, lambda f: f.write(data), what, elsewhere)


def write_text_atomically(path: str | Path, text: str, what: str, elsewhere: str = TRAINING_ELSEWHERE) -> None:
    write_bytes_atomically(path, text.encode(), what, elsewhere)


# ------------------------------------------------------------------ pool snapshots
def write_snapshot(folder: Path, step: int, state: dict[str, Tensor]) -> tuple[str, str]:
    """Write one classifier snapshot as safetensors; returns (file name, SHA-256 of its bytes).

    The random suffix keeps a resumed run (which takes a snapshot at a step again) from overwriting
    the file an abandoned later checkpoint refers to."""
    data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    name = f"step{step:07d}-{uuid.uuid4().hex[:8]}.safetensors"
    write_atomically(folder / name, lambda f: f.write(data), what="pool snapshot")
    return name, hashlib.sha256(data).hexdigest()


_SNAPSHOT_FIX = ("the pool folder must stay beside checkpoints/ (copy or move the whole run folder); resume from a "
                 "checkpoint whose snapshots are intact, or start again")


def snapshot_path(folder: Path, name: str, checkpoint: str | Path = "the checkpoint") -> Path:
    """Where a snapshot a checkpoint refers to lies; a one-line error if it is missing."""
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} refers to pool snapshot {path}, which is missing: {_SNAPSHOT_FIX}")
    return path


def read_snapshot(folder: Path, name: str, sha256: str, checkpoint: str | Path = "the checkpoint") -> dict[str, Tensor]:
    """A snapshot a checkpoint refers to, checked against its digest."""
    path = snapshot_path(folder, name, checkpoint)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path}: pool snapshot is damaged (its SHA-256 differs from the one {checkpoint} "
                        f"recorded): {_SNAPSHOT_FIX}")
    return load(data)


def read_pool(path: str | Path) -> list[dict[str, Tensor]]:
    """The classifier snapshots a training checkpoint's pool held, in pool order (read from RUN/pool, or
    from the checkpoint itself if it carries them)."""
    path = Path(path)
    pool = read_checkpoint(path).get("casm_state", {}).get("pool")
    if pool is None:
        raise UserError(f"{path}: not a casm training checkpoint (no classifier pool)")
    if "files" not in pool:
        return list(pool["snapshots"])
    folder = run_folder(path) / POOL_FOLDER
    return [read_snapshot(folder, name, digest, path) for name, digest in zip(pool["files"], pool["sha256"])]


class SnapshotFiles:
    """Which checkpoints refer to which snapshot files, so that a snapshot no checkpoint needs any more
    (evicted from the pool, and every checkpoint that held it deleted) is removed from disk.

    Kept in ``RUN/pool/references.json``; only the process that writes checkpoints (global rank 0)
    touches it."""

    def __init__(self, pool_folder: Path) -> None:
        self.folder = pool_folder
        self.index = self.folder / _REFERENCES

    def _read(self) -> dict[str, list[str]]:
        try:
            return json.loads(self.index.read_text())
        except (OSError, ValueError):
            return {}

    def record(self, checkpoint: Path, files: Iterable[str]) -> None:
        references = self._read()
        references[checkpoint.name] = list(files)
        data = json.dumps(references, indent=1).encode()
        write_atomically(self.index, lambda f: f.write(data), what="pool index")

    def collect(self, checkpoint_folder: Path) -> list[Path]:
        """Delete snapshot files no existing checkpoint refers to; returns them. Called right after a
        checkpoint is written (it holds the whole current pool), so the pool in memory is covered.
        A checkpoint the index does not know (copied in by hand) stops the collection: its references
        are unknown."""
        references = self._read()
        existing = {p.name for p in checkpoint_folder.glob("*.ckpt") if not p.is_symlink()}
        if existing - set(references):
            return []
        needed = {f for name, files in references.items() if name in existing for f in files}
        removed = [p for p in self.folder.glob("step*.safetensors") if p.name not in needed]
        for path in removed:
            path.unlink(missing_ok=True)
        live = {name: files for name, files in references.items() if name in existing}
        if live != references:
            data = json.dumps(live, indent=1).encode()
            write_atomically(self.index, lambda f: f.write(data), what="pool index")
        return removed
