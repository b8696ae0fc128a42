"""Has a masker collapsed? A run whose masks are all off, all on, the same for every image, remove
nothing the classifier uses, or localize no better than a box that ignores the image has failed: its
LE or accuracy is not a result. The checks run on every validation after the warm-up; a run says so
on the console and in ``RUN/health.json``, and reports mark it.

The thresholds are deliberately loose: they catch the failures seen in practice (all-on masks at
0.95 of the image, empty masks at 0.01, near-empty ones that an area penalty switched off does not
grow, one blob in the same place for every image), not a merely poor masker, and each names what it
saw so a reader can judge.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

HEALTH_FILE = "health.json"  # in the run folder: every post-warm-up validation's check, and the last one's verdict
ALL_OFF = 0.01  # mean mask below this: the masks keep nothing
ALL_ON = 0.90  # mean mask above this: the masks remove (almost) the whole image
SAME_MASK = 0.02  # spread below this (see MaskSpread): every image gets (nearly) the same mask
NO_EVIDENCE = 0.02  # masked-out top-1 this close to the clean top-1: the masks remove nothing the classifier uses
# target-area mode: masks below this share of the target area while lambda_R sits at its floor (the area penalty
# is off and they still do not grow) are a near-empty masker
NEAR_EMPTY = 0.25
LAMBDA_FLOOR = 1e-3
# LE must be at least this far below the centred box's; set between the near-empty maskers seen and the
# closest healthy run of the shipped studies (docs/training.md, "Collapsed masks are named")
LE_MARGIN = 0.04


class MaskSpread(Metric):
    """How much the masks differ between images: the root mean over pixels of each pixel's variance across
    all images (0 when every image gets the same mask, about 0.5 for independent binary masks of 0.5).
    For masks of ``pixels`` pixels each, as validation batches are (fixed-size states sync across ranks,
    also from a rank that saw no image)."""

    full_state_update = False

    def __init__(self, pixels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum", torch.zeros(pixels, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.zeros(pixels, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, masks: Tensor) -> None:
        m = masks.detach().flatten(1).double()  # (B, pixels)
        self.sum += m.sum(dim=0)
        self.sum_sq += m.pow(2).sum(dim=0)
        self.total += len(m)

    def compute(self) -> Tensor:
        n = self.total.clamp(min=1)
        variance = (self.sum_sq / n - (self.sum / n).pow(2)).clamp(min=0)
        return variance.mean().sqrt().float()


@dataclass
class MaskHealth:
    """What one validation saw (None where it was not measured, e.g. LE on data without boxes)."""

    mask_mean: float
    mask_spread: float | None = None
    accuracy: float | None = None
    masked_out_accuracy: float | None = None
    le: float | None = None
    le_centre_box: float | None = None
    lambda_r: float | None = None  # the area penalty's weight at this validation
    target_area: float | None = None  # the mean mask it steers to (target-area mode; None: a fixed lambda_R)

    def collapse_reasons(self) -> list[str]:
        """Each failure seen, in words with its numbers; empty for a healthy masker."""
        reasons = []
        if self.mask_mean < ALL_OFF:
            reasons.append(f"all-off masks (mean {self.mask_mean:.3f} < {ALL_OFF})")
        if self.mask_mean > ALL_ON:
            reasons.append(f"all-on masks (mean {self.mask_mean:.3f} > {ALL_ON})")
        if self.mask_spread is not None and self.mask_spread < SAME_MASK:
            reasons.append(f"the same mask for every image (spread {self.mask_spread:.3f} < {SAME_MASK})")
        if self.accuracy is not None and self.masked_out_accuracy is not None \
                and self.masked_out_accuracy >= self.accuracy - NO_EVIDENCE:
            reasons.append(f"masks remove no evidence (masked-out top-1 {self.masked_out_accuracy:.3f} vs clean "
                           f"{self.accuracy:.3f})")
        if self.target_area is not None and self.lambda_r is not None and self.lambda_r <= LAMBDA_FLOOR \
                and ALL_OFF <= self.mask_mean < NEAR_EMPTY * self.target_area:
            reasons.append(f"near-empty masks (mean {self.mask_mean:.3f}, under {NEAR_EMPTY} of the target area "
                           f"{self.target_area}) with lambda_R at its floor ({self.lambda_r:.3g}): the area penalty "
                           f"is off and the masks still do not grow")
        if self.le is not None and self.le_centre_box is not None:
            if self.le >= self.le_centre_box:
                reasons.append(f"LE {self.le:.3f} no better than the centred box's {self.le_centre_box:.3f}")
            elif self.le > self.le_centre_box - LE_MARGIN:
                reasons.append(f"LE {self.le:.3f} within {LE_MARGIN} of the centred box's {self.le_centre_box:.3f} "
                               f"(a box that ignores the image)")
        return reasons

    def as_dict(self) -> dict:
        return {**asdict(self), "collapsed": self.collapse_reasons()}


def read_collapse(run_dir: Path) -> list[str]:
    """The collapse reasons a training run recorded at its last validation (RUN/health.json; none if absent)."""
    path = Path(run_dir) / HEALTH_FILE
    return json.loads(path.read_text()).get("collapsed", []) if path.is_file() else []
