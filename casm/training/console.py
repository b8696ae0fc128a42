"""One line per epoch on the console (rank 0): what a run on a cluster, with no progress bar, shows.

TensorBoard has every curve; a log file needs the few numbers that say whether a run is healthy:
classifier accuracy, mask size, localization against the toy reference, λ_R and time.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from tqdm.auto import tqdm

from casm.training.timing import EpochTimer


class EpochSummary(pl.Callback):
    """Prints, after each epoch's validation, e.g.
    ``epoch 3/7 CASM | top-1 0.945 | masked-out 0.540 | mask 0.309 | LE 0.619 OM 0.639 (centred box 0.748) |
    λ_R 0.52 | 80.8 s``."""

    def __init__(self, timer: EpochTimer) -> None:
        self.timer = timer  # placed before this callback, so its figures are this epoch's
        self.validated_epoch = -1  # trainer.check_val_every_n_epoch > 1 leaves epochs without validation

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            tqdm.write(self.line(trainer, pl_module))

    def line(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        validated = self.validated_epoch == trainer.current_epoch  # else the metrics are an earlier epoch's
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and validated}
        phase = "warm-up" if getattr(pl_module, "in_warmup", False) else getattr(pl_module.cfg, "mode", "casm").upper()
        parts = [f"epoch {trainer.current_epoch}/{trainer.max_epochs - 1} {phase}"]
        if not validated:
            parts.append("no validation (trainer.check_val_every_n_epoch)")
        for key, title in (("val/accuracy", "top-1"), ("val/masked_out_accuracy", "masked-out"),
                           ("val/mask_mean", "mask")):
            if key in metrics:
                parts.append(f"{title} {metrics[key]:.3f}")
        if "val/le" in metrics:
            reference = f" (centred box {metrics['val/le_centre_box']:.3f})" if "val/le_centre_box" in metrics else ""
            parts.append(f"LE {metrics['val/le']:.3f} OM {metrics['val/om']:.3f}{reference}")
        if hasattr(pl_module, "lambda_r"):
            parts.append(f"λ_R {pl_module.lambda_r.value:.3g}")
        if self.timer.last_epoch_seconds is not None:
            parts.append(f"{self.timer.last_epoch_seconds:.1f} s")
        health = getattr(pl_module, "health", None)
        if validated and health and health["epoch"] == trainer.current_epoch and health["collapsed"]:
            parts.append(f"collapse check failed: {'; '.join(health['collapsed'])}")
        return " | ".join(parts)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        health = getattr(pl_module, "health", None)
        if trainer.is_global_zero and health and health["collapsed"]:
            tqdm.write(f"casm: WARNING: at its last validation (epoch {health['epoch']}) this run's masks have "
                       f"collapsed: {'; '.join(health['collapsed'])}. Its LE and accuracies are not a result; "
                       f"see RUN/health.json, and docs on collapse for what to change")


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, showing the mask area and λ_R of the latest step. They are read from the module
    when the bar refreshes: a value logged with ``prog_bar=True`` instead is copied to the host after
    every step, which on a GPU stalls the device each time."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        area = getattr(pl_module, "last_mask_area", None)
        if area is not None:
            metrics.update(mask=f"{float(area):.3f}", lambda_r=f"{pl_module.lambda_r.value:.3g}")
        return metrics
