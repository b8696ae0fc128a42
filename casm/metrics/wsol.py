"""The weakly-supervised localization metrics of Choe et al. (CVPR 2020, "Evaluating Weakly Supervised
Object Localization Methods Right"): MaxBoxAccV2 on boxes and PxAP on pixel masks (docs/evaluation.md).

Both sweep a threshold over the map instead of fixing one binarization rule, so no method is judged by a
rule tuned for another. The paper's MaxBoxAccV2 takes the best threshold on the very images it scores;
the held-out variant here chooses it on half of the images and scores the other half (both ways), so no
method is tuned on its test images. The conventions are in :data:`CONVENTIONS` (written to metrics.json).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

IOU_THRESHOLDS = (0.3, 0.5, 0.7)
CONVENTIONS = {
    "max_box_acc_v2": "mean over IoU 0.3/0.5/0.7 of the best box accuracy over thresholds t = 0, 1/T, ..., "
                      "(T-1)/T (T = wsol_thresholds); at t a pixel is kept if map > t, every contour of the kept "
                      "pixels gives a box (OpenCV findContours, all contours, bounding rectangles), an image is "
                      "correct if any box has IoU >= the level with any ground-truth box; boxes have exclusive "
                      "ends and IoU has no +1 pixel; the best t is chosen on the scored images (the paper's "
                      "number)",
    "max_box_acc_v2_heldout": "the same, with each IoU level's threshold chosen on the even-indexed images and "
                              "scored on the odd ones and the reverse, the two halves averaged by image count",
    "pxap": "area under the pixel precision-recall curve over all evaluated pixels of all images, thresholds as "
            "above with a pixel positive if map >= t: sum over decreasing t of precision(t) x (recall(t) - "
            "recall(previous t)); maps are taken as they are (min-max normalized by every method to [0, 1])",
}


def contour_boxes(binary: np.ndarray) -> np.ndarray:
    """(n, 4) exclusive-end boxes ``[x0, y0, x1, y1]`` of every contour of a (H, W) binary map (n >= 1: an
    empty map gives one empty box, which overlaps nothing)."""
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((1, 4), np.float32)
    rects = np.array([cv2.boundingRect(c) for c in contours], np.float32)  # x, y, w, h
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def _iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(n, 4) x (N, 4) exclusive-end boxes -> (n, N) IoU (numpy: called per image and threshold)."""
    b, g = boxes[:, None], gt[None]
    inter = (np.clip(np.minimum(b[..., 2], g[..., 2]) - np.maximum(b[..., 0], g[..., 0]), 0, None)
             * np.clip(np.minimum(b[..., 3], g[..., 3]) - np.maximum(b[..., 1], g[..., 1]), 0, None))
    union = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) + (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
             - inter)
    return inter / np.maximum(union, 1e-9)


def best_box_iou(maps: np.ndarray, threshold: float, gt: list[np.ndarray]) -> np.ndarray:
    """(B,) the best IoU between any contour box of ``map > threshold`` and any of the image's boxes."""
    return np.array([_iou(contour_boxes(m > threshold), g).max() if len(g) else 0.0 for m, g in zip(maps, gt)])


class MaxBoxAccV2(Metric):
    """Box accuracy at every (threshold, IoU level), kept separately for even and odd dataset indices, so
    that :meth:`compute` can give the paper's MaxBoxAccV2 and its held-out variant (module docstring)."""

    full_state_update = False

    def __init__(self, num_thresholds: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = torch.arange(num_thresholds, dtype=torch.float64) / num_thresholds
        self.add_state("hits", torch.zeros(2, num_thresholds, len(IOU_THRESHOLDS)), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(2), dist_reduce_fx="sum")

    def update(self, maps: Tensor, gt_boxes: Tensor, gt_valid: Tensor, index: Tensor) -> None:
        """``maps`` (B, H, W) in [0, 1]; ``index``: dataset positions (their parity picks the half)."""
        arrays = maps.detach().float().cpu().numpy()
        gt = [b[v].float().cpu().numpy() for b, v in zip(gt_boxes, gt_valid)]
        half = (index.cpu() % 2).long()
        levels = np.array(IOU_THRESHOLDS)
        for t, threshold in enumerate(self.thresholds.tolist()):
            correct = torch.from_numpy((best_box_iou(arrays, threshold, gt)[:, None] >= levels).astype(np.float32))
            self.hits[:, t].index_add_(0, half.to(self.hits.device), correct.to(self.hits.device))
        self.total += torch.bincount(half, minlength=2).to(self.total.device).float()

    def compute(self) -> dict[str, Tensor]:
        accuracy = self.hits.sum(0) / self.total.sum().clamp(min=1)  # (T, 3)
        best = accuracy.max(dim=0).values  # (3,)
        out = {f"max_box_acc@{round(level * 100)}": best[j] * 100 for j, level in enumerate(IOU_THRESHOLDS)}
        out["max_box_acc_v2"] = best.mean() * 100
        if (self.total > 0).all():
            per_half = self.hits / self.total[:, None, None]  # (2, T, 3)
            chosen = per_half.argmax(dim=1)  # (2, 3): each half's best threshold per level
            levels = torch.arange(len(IOU_THRESHOLDS))
            # the threshold chosen on one half, read on the other, weighted by the other's image count
            read = torch.stack([per_half[1, chosen[0], levels], per_half[0, chosen[1], levels]])  # (2, 3)
            weights = self.total.flip(0) / self.total.sum()
            out["max_box_acc_v2_heldout"] = (read * weights[:, None]).sum(0).mean() * 100
        return out


class PixelAveragePrecision(Metric):
    """PxAP: histograms of the map's values over object and background pixels (fixed-size states, so it
    reduces under DDP and never holds the pixels), then the precision-recall curve over thresholds."""

    full_state_update = False

    def __init__(self, num_thresholds: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_thresholds = num_thresholds
        self.add_state("object", torch.zeros(num_thresholds + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("background", torch.zeros(num_thresholds + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, maps: Tensor, object_masks: Tensor) -> None:
        """``maps`` (B, H, W) in [0, 1]; ``object_masks`` (B, H, W) bool. Bin j holds values in [j/T, (j+1)/T)
        (1 itself in bin T), so the pixels at or above threshold j/T are bins j..T."""
        bins = (maps.detach().double().clamp(0, 1) * self.num_thresholds).floor().long().flatten()
        inside = object_masks.to(maps.device).flatten().bool()
        size = self.num_thresholds + 1
        self.object += torch.bincount(bins[inside], minlength=size).double().to(self.object.device)
        self.background += torch.bincount(bins[~inside], minlength=size).double().to(self.background.device)

    def compute(self) -> Tensor:
        true_positives = self.object.flip(0).cumsum(0)  # at thresholds T/T, (T-1)/T, ..., 0
        kept = true_positives + self.background.flip(0).cumsum(0)
        precision = true_positives / kept.clamp(min=1)
        recall = true_positives / self.object.sum().clamp(min=1)
        gained = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
        return (precision * gained).sum() * 100
