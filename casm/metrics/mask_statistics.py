"""Statistics of the masks themselves (docs/evaluation.md): size, spread, decisiveness, smoothness."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class MaskStatistics(Metric):
    """Over all images: mean mask, std of the per-image mean masks, mean per-pixel binary entropy
    (0 for a binary mask, ln 2 for a mask of 0.5 everywhere), and total variation (mean squared
    horizontal plus mean squared vertical differences)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("sum_mean", "sum_mean_sq", "sum_entropy", "sum_tv", "total"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, maps: Tensor) -> None:
        m = (maps.squeeze(1) if maps.dim() == 4 else maps).double().clamp(0, 1)  # (B, H, W)
        per_image = m.flatten(1).mean(dim=1)
        p = m.clamp(1e-12, 1 - 1e-12)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log())
        tv = (m[:, :, 1:] - m[:, :, :-1]).pow(2).flatten(1).mean(1) + (m[:, 1:] - m[:, :-1]).pow(2).flatten(1).mean(1)
        self.sum_mean += per_image.sum()
        self.sum_mean_sq += per_image.pow(2).sum()
        self.sum_entropy += entropy.flatten(1).mean(dim=1).sum()
        self.sum_tv += tv.sum()
        self.total += len(m)

    def compute(self) -> dict[str, Tensor]:
        n = self.total.clamp(min=1)
        mean = self.sum_mean / n
        var = (self.sum_mean_sq / n - mean.pow(2)).clamp(min=0)
        return {"mask_mean": mean.float(), "mask_std": var.sqrt().float(),
                "mask_entropy": (self.sum_entropy / n).float(), "mask_tv": (self.sum_tv / n).float()}
