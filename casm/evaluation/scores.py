"""One method's metrics, accumulated over batches (torchmetrics, so they reduce under DDP), and the
toy references' maps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from casm.metrics.localization import BoxAccuracySweep, ContinuousF1, LocalizationMetric, box_masks, reference_boxes
from casm.metrics.mask_statistics import MaskStatistics
from casm.metrics.wsol import MaxBoxAccV2, PixelAveragePrecision

REFERENCES = {"full_image": "full", "centre_box": "centre"}  # method name -> reference box kind


@dataclass
class MethodScores:
    """Every metric of one method, accumulated over batches (torchmetrics: DDP-ready)."""

    rule: str
    alpha: float
    thresholds: int
    wsol_thresholds: int = 100
    localization: LocalizationMetric = None
    localization_other_rule: LocalizationMetric = None
    f1: ContinuousF1 = field(default_factory=ContinuousF1)
    sweep_select: BoxAccuracySweep = None
    sweep_test: BoxAccuracySweep = None
    stats: MaskStatistics = field(default_factory=MaskStatistics)
    max_box_acc: MaxBoxAccV2 = None
    pxap: PixelAveragePrecision = None
    means: dict[str, MeanMetric] = field(default_factory=dict)
    images: int = 0
    images_seen: int = 0  # of those, images of classes the explained classifier knows
    nan_maps: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        other = "alpha_mean" if self.rule == "quantile" else "quantile"
        self.localization = LocalizationMetric(self.rule, self.alpha)
        self.localization_other_rule = LocalizationMetric(other, self.alpha)
        self.sweep_select = BoxAccuracySweep(self.thresholds)
        self.sweep_test = BoxAccuracySweep(self.thresholds)
        self.max_box_acc = MaxBoxAccV2(self.wsol_thresholds)
        self.pxap = PixelAveragePrecision(self.wsol_thresholds)

    def mean(self, name: str, values: Tensor) -> None:
        self.means.setdefault(name, MeanMetric()).update(values.detach().float().cpu())

    def counts(self) -> list[float]:
        """What decides which metrics exist: summed over ranks before :meth:`result`, so that every rank
        computes (and so synchronizes) the same metrics in the same order."""
        return [self.images, self.images_seen, self.nan_maps, self.seconds, float(self.localization.total),
                float(self.localization.om_total), float(self.sweep_select.total), float(self.sweep_test.total),
                float(self.max_box_acc.total.sum()), float(self.pxap.object.sum()),
                *[float(self.means[k].update_count) for k in sorted(self.means)]]

    def result(self, counts: list[float] | None = None) -> dict[str, float]:
        """The metrics; ``counts``: :meth:`counts` summed over all ranks (torchmetrics sum the states)."""
        images, seen, nan_maps, seconds, located, om_total, selected, tested, boxed, object_pixels, *updates = \
            counts or self.counts()
        out: dict[str, float] = {"images": int(images), "images_seen": int(seen), "nan_maps": int(nan_maps),
                                 "ms_per_image": 1000 * seconds / max(images, 1)}
        out.update({k: float(v) for k, v in self.stats.compute().items()})
        if located > 0:
            loc = self.localization.compute()
            other = self.localization_other_rule.compute()
            out.update(le=float(loc["le"]), le_other_rule=float(other["le"]))
            if om_total > 0:  # OM only on images of classes the classifier knows
                out["om"] = float(loc["om"])
            out.update({k: float(v) for k, v in self.f1.compute().items()})
        if selected > 0 and tested > 0:
            best = self.sweep_select.best_threshold()
            out.update(sweep_threshold=best, sweep_box_accuracy=self.sweep_test.accuracy_at(best))
        if boxed > 0:
            out.update({k: float(v) for k, v in self.max_box_acc.compute().items()})
        if object_pixels > 0:
            out["pxap"] = float(self.pxap.compute())
        out.update({k: float(self.means[k].compute()) for k, n in zip(sorted(self.means), updates) if n > 0})
        return out


def reference_map(name: str, batch: int, height: int, width: int, device: torch.device) -> Tensor:
    """A toy reference's map: 1 inside its box, 0 outside, (B, H, W)."""
    boxes = reference_boxes(REFERENCES[name], batch, height, width, device)
    return box_masks(boxes[:, None], torch.ones(batch, 1, dtype=torch.bool, device=device), height, width)[:, 0].float()
