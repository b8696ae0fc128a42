"""Wall-clock time per epoch, logged to TensorBoard.

Lightning's own ``Timer`` callback measures whole stages and can stop a run on a budget, but it does
not log per-epoch figures; comparing heads and thinning strategies needs exactly those.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl


class EpochTimer(pl.Callback):
    """Logs ``time/train_epoch_s`` (training batches only) and ``time/epoch_s`` (with validation)."""

    def __init__(self) -> None:
        self._epoch_start = 0.0
        self._train_seconds: float | None = None
        self.last_epoch_seconds: float | None = None  # the last finished epoch's, for the console line

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a run resumed mid-epoch enters its epoch without on_train_epoch_start
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._train_seconds = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._epoch_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch_seconds = time.perf_counter() - self._epoch_start
        train_seconds = epoch_seconds if self._train_seconds is None else self._train_seconds
        pl_module.log("time/train_epoch_s", train_seconds, on_epoch=True, sync_dist=False)
        pl_module.log("time/epoch_s", epoch_seconds, on_epoch=True, sync_dist=False)
        self.last_epoch_seconds = epoch_seconds
