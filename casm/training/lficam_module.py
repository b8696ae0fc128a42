"""Training LFI-CAM's own classifier (``mode=lficam``): cross-entropy only, attention as explanation."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from casm.config import with_defaults
from casm.distributed import empty_on_any_rank
from casm.metrics.localization import LocalizationMetric
from casm.models.lficam import LFICAMClassifier
from casm.models.resnet import ResNetClassifier
from casm.training.batching import classifier_optimizer


class LFICAMModule(pl.LightningModule):
    """A classifier whose perception branch sees ``F * (1 + A)``; validation reports accuracy and the
    localization error of its attention maps, like the CASM module's masks."""

    def __init__(self, config: dict[str, Any], num_classes: int, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = with_defaults(config)  # a checkpoint of an earlier casm lacks the newer keys
        m = self.cfg.model
        self.model = LFICAMClassifier(m.arch, num_classes, m.width, self.cfg.masker.hidden)
        if m.pretrained:
            donor = ResNetClassifier(m.arch, num_classes, m.width)
            donor.load_weights(m.pretrained)
            self.model.load_trunk(donor.state_dict())
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_mask_mean = MeanMetric()
        self.val_localization = LocalizationMetric()

    def configure_optimizers(self):
        opt = classifier_optimizer(self.parameters(), self.cfg)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, self.cfg.optim.lr_step_epochs, self.cfg.optim.lr_gamma)]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if empty_on_any_rank(batch["image"]):  # every image of a rank's batch unreadable: all ranks skip it
            return None
        logits, _, attention = self.model(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        self.log_dict({"train/classifier_loss": loss, "train/attention_mean": attention.mean(),
                       "train/clean_acc": (logits.argmax(1) == batch["label"]).float().mean()})
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, y, gt, valid = batch["image"], batch["label"], batch["boxes"], batch["box_valid"]
        logits, _, _ = self.model(x)
        maps = self.model.explain(x)
        self.val_accuracy.update(logits, y)
        self.val_mask_mean.update(maps.mean(dim=(1, 2)))
        has_box = valid.any(dim=1)
        if has_box.any():
            self.val_localization.update(gt[has_box], valid[has_box], maps=maps[has_box],
                                         correct=(logits.argmax(1) == y)[has_box])

    def on_validation_epoch_end(self) -> None:
        self.log_dict({"val/accuracy": self.val_accuracy.compute(), "val/mask_mean": self.val_mask_mean.compute()},
                      prog_bar=True)
        if self.val_localization.total > 0:
            result = self.val_localization.compute()
            self.log_dict({"val/le": result["le"], "val/om": result["om"]}, prog_bar=True)
        for metric in (self.val_accuracy, self.val_mask_mean, self.val_localization):
            metric.reset()
