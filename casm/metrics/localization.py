"""Box localization from saliency maps: LE and OM (docs/evaluation.md).

Boxes are ``[x0, y0, x1, y1]`` in pixels with exclusive ends; ground truth comes padded as
(B, N, 4) with a (B, N) validity mask, since images have different numbers of boxes.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from casm.errors import UserError

CENTRED_BOX_FRACTION = 158 / 224  # the reference's centred toy box
CONVENTIONS = {  # written to metrics.json, so a number never changes meaning silently
    "le": "1 - [the box of the largest 4-connected component of the binarized map has IoU > 0.5 (strict) with "
          "some ground-truth box]; binarization: eval binarization/alpha; boxes have exclusive ends, IoU no +1",
    "om": "as le, also wrong when the explained classifier's top-1 class is wrong; over images of classes it knows",
    "sweep_box_accuracy": "box accuracy (largest component, IoU > 0.5) at the threshold m >= t that is best on the "
                          "even-indexed images, read on the odd ones; t over sweep_thresholds points in (0, 1)",
}


def binarize(maps: Tensor, rule: str = "quantile", alpha: float = 1.0) -> Tensor:
    """(B, H, W) maps in [0, 1] -> (B, H, W) bool.

    ``quantile``: keep pixels at or above the (1 - mean(m)) quantile, so the binary area is about the
    mean mask value (the reference code). ``alpha_mean``: keep ``m >= alpha * mean(m)`` (the paper text).
    """
    flat = maps.flatten(1).float()
    mean = flat.mean(dim=1, keepdim=True)
    if rule == "quantile":
        return (flat >= row_quantiles(flat, 1 - mean)).view_as(maps)
    if rule == "alpha_mean":
        return (flat >= alpha * mean).view_as(maps)
    raise UserError(f"binarization rule must be 'quantile' or 'alpha_mean', got {rule!r}")


def row_quantiles(flat: Tensor, q: Tensor) -> Tensor:
    """The ``q`` (B, 1) quantile of each row of ``flat`` (B, N), interpolated linearly as torch.quantile
    does. By selection (``kthvalue``, O(N), no index tensor the size of the row), because
    torch.quantile refuses rows above 2**24 elements (a 24 MP photo's mask) and a full sort of one
    costs a 64-bit index per pixel."""
    position = q.clamp(0, 1)[:, 0] * (flat.shape[1] - 1)
    out = torch.empty(flat.shape[0], 1, dtype=flat.dtype, device=flat.device)
    for row, (values, p) in enumerate(zip(flat, position.tolist())):
        low, high = math.floor(p), math.ceil(p)
        v_low = values.kthvalue(low + 1).values
        v_high = v_low if high == low else values.kthvalue(high + 1).values
        out[row, 0] = v_low + (v_high - v_low) * (p - low)
    return out


def largest_component_box(binary: np.ndarray) -> np.ndarray:
    """Tight box of the largest 4-connected component of a (H, W) binary map; all zeros if empty."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros(4, np.float32)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (stats[best, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    return np.array([x, y, x + w, y + h], np.float32)


def predicted_boxes(maps: Tensor, rule: str = "quantile", alpha: float = 1.0) -> Tensor:
    """(B, H, W) maps -> (B, 4) boxes: binarize, keep the largest 4-connected component."""
    binary = binarize(maps, rule, alpha).cpu().numpy()
    return torch.from_numpy(np.stack([largest_component_box(b) for b in binary])).to(maps.device)


def box_iou(boxes: Tensor, gt: Tensor) -> Tensor:
    """IoU of one box per image (B, 4) with each of its ground-truth boxes (B, N, 4) -> (B, N)."""
    b = boxes.unsqueeze(1)
    iw = (torch.minimum(b[..., 2], gt[..., 2]) - torch.maximum(b[..., 0], gt[..., 0])).clamp(min=0)
    ih = (torch.minimum(b[..., 3], gt[..., 3]) - torch.maximum(b[..., 1], gt[..., 1])).clamp(min=0)
    inter = iw * ih
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area_g = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    return inter / (area_b + area_g - inter).clamp(min=1e-9)


def reference_boxes(kind: str, batch: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """The toy references: the full image, or the reference's centred box (158/224 of each side)."""
    if kind == "full":
        box = [0.0, 0.0, float(width), float(height)]
    elif kind == "centre":
        bw, bh = width * CENTRED_BOX_FRACTION, height * CENTRED_BOX_FRACTION
        box = [(width - bw) / 2, (height - bh) / 2, (width + bw) / 2, (height + bh) / 2]
    else:
        raise ValueError(f"reference box must be 'full' or 'centre', got {kind!r}")
    return torch.tensor(box, device=device).expand(batch, 4)


def localization_hits(boxes: Tensor, gt_boxes: Tensor, gt_valid: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """(B,) bool: the predicted box overlaps some ground-truth box with IoU above the threshold."""
    iou = box_iou(boxes.float(), gt_boxes.float()).masked_fill(~gt_valid, 0.0)
    return iou.max(dim=1).values > iou_threshold


class LocalizationMetric(Metric):
    """LE = 1 - [max IoU > 0.5] and OM (also wrong when the top-1 class is wrong), averaged over images.

    ``update(maps=..., ...)`` binarizes the maps; ``update(boxes=..., ...)`` takes boxes directly
    (the toy references). ``seen`` marks the images whose class the classifier knows: OM is averaged
    over those only (on a class it never saw a classifier cannot be right), LE over every image.
    Sums are reduced across DDP ranks by torchmetrics.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, rule: str = "quantile", alpha: float = 1.0, iou_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rule, self.alpha, self.iou_threshold = rule, alpha, iou_threshold
        self.add_state("le_errors", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("om_errors", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("om_total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, gt_boxes: Tensor, gt_valid: Tensor, maps: Tensor | None = None, boxes: Tensor | None = None,
               correct: Tensor | None = None, seen: Tensor | None = None) -> None:
        if boxes is None:
            if maps is None:
                raise ValueError("give either maps or boxes")
            boxes = predicted_boxes(maps.squeeze(1) if maps.dim() == 4 else maps, self.rule, self.alpha)
        hit = localization_hits(boxes, gt_boxes, gt_valid, self.iou_threshold)
        right = hit if correct is None else hit & correct.bool()
        seen = torch.ones_like(hit) if seen is None else seen.bool()
        self.le_errors += (~hit).sum()
        self.om_errors += (~right & seen).sum()
        self.total += hit.numel()
        self.om_total += seen.sum()

    def compute(self) -> dict[str, Tensor]:
        return {"le": self.le_errors / self.total.clamp(min=1), "om": self.om_errors / self.om_total.clamp(min=1)}


def box_masks(gt_boxes: Tensor, gt_valid: Tensor, height: int, width: int) -> Tensor:
    """(B, N, 4) boxes -> (B, N, H, W) bool pixel masks (invalid boxes are empty)."""
    ys = torch.arange(height, device=gt_boxes.device).view(1, 1, height, 1) + 0.5
    xs = torch.arange(width, device=gt_boxes.device).view(1, 1, 1, width) + 0.5
    b = gt_boxes[..., None, None]
    inside = (xs >= b[:, :, 0]) & (xs < b[:, :, 2]) & (ys >= b[:, :, 1]) & (ys < b[:, :, 3])
    return inside & gt_valid[..., None, None]


def continuous_f1(maps: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, for each box B: ``P = sum_B m / sum m``, ``R = sum_B m / |B|``, F1 = 2PR/(P+R).
    Returns (max over boxes, mean over boxes), each (B,)."""
    inside = box_masks(gt_boxes, gt_valid, *maps.shape[-2:]).float()  # (B, N, H, W)
    m = maps[:, None].float()
    mass_in = (m * inside).sum(dim=(2, 3))
    precision = mass_in / m.sum(dim=(2, 3)).clamp(min=1e-9)
    recall = mass_in / inside.sum(dim=(2, 3)).clamp(min=1e-9)
    f1 = (2 * precision * recall / (precision + recall).clamp(min=1e-9)).masked_fill(~gt_valid, 0.0)
    best = f1.max(dim=1).values
    mean = f1.sum(dim=1) / gt_valid.sum(dim=1).clamp(min=1)
    return best, mean


class ContinuousF1(Metric):
    """Mean over images of the continuous F1 (best box) and F1a (mean over boxes) (docs/evaluation.md)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("f1", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("f1a", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, maps: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> None:
        best, mean = continuous_f1(maps.squeeze(1) if maps.dim() == 4 else maps, gt_boxes, gt_valid)
        self.f1 += best.sum()
        self.f1a += mean.sum()
        self.total += best.numel()

    def compute(self) -> dict[str, Tensor]:
        total = self.total.clamp(min=1)
        return {"f1": self.f1 / total, "f1a": self.f1a / total}


class BoxAccuracySweep(Metric):
    """Box accuracy (IoU > 0.5) at each of ``thresholds`` (``m >= t``, largest 4-connected component).

    So that no method is penalized for one binarization rule (cf. MaxBoxAcc, Choe et al. 2020): pick
    the best threshold on one split with :meth:`best_threshold`, then read the accuracy at that
    threshold on another split with :meth:`accuracy_at`."""

    full_state_update = False

    def __init__(self, num_thresholds: int = 21, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = torch.linspace(0, 1, num_thresholds + 2)[1:-1]  # open interval: 0 and 1 are degenerate
        self.add_state("hits", torch.zeros(num_thresholds), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, maps: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> None:
        maps = (maps.squeeze(1) if maps.dim() == 4 else maps).detach().float().cpu().numpy()
        for i, t in enumerate(self.thresholds.tolist()):
            boxes = torch.from_numpy(np.stack([largest_component_box(m >= t) for m in maps])).to(gt_boxes.device)
            self.hits[i] += localization_hits(boxes, gt_boxes, gt_valid).sum()
        self.total += len(maps)

    def compute(self) -> Tensor:
        return self.hits / self.total.clamp(min=1)

    def best_threshold(self) -> float:
        return float(self.thresholds[int(self.compute().argmax())])

    def accuracy_at(self, threshold: float) -> float:
        index = int((self.thresholds - threshold).abs().argmin())
        return float(self.compute()[index])
