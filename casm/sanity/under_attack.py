"""casm under the manipulation attacks: compare the masks of maskers trained against a classifier and
against attacked copies of it (``model.manipulation=T1..T4``; configs/studies/sanity_under_attack.yaml,
examples/sanity_table.py).

A masker learns from the classifier's *outputs* on masked images. T1/T2 keep those outputs (up to the
float32 rounding of their 10^4-sized constants), T3/T4 add a score term that changes no ranking and no
softmax: the masks should not move more than training noise moves them. The yardstick for "training
noise" is the distance between maskers trained against the *same* classifier with other seeds.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import torch
from torch import Tensor

from casm.export.standalone import masker_from_checkpoint


@torch.no_grad()
def masks_of(checkpoint: str | Path, images: Tensor, batch: int = 100) -> Tensor:
    """(B, H, W) masks in [0, 1] of a training checkpoint's masker on normalized ``images``."""
    masker = masker_from_checkpoint(checkpoint).masker.to(images.device)
    return torch.cat([masker(images[i: i + batch])[:, 0] for i in range(0, len(images), batch)])


def mask_agreement(a: Tensor, b: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """How alike two sets of (B, H, W) masks are: the mean absolute difference of the mask values, and the
    mean per-image IoU of the regions above ``threshold`` (two empty regions agree: IoU 1)."""
    above_a, above_b = a > threshold, b > threshold
    inter = (above_a & above_b).flatten(1).sum(1).float()
    union = (above_a | above_b).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return {"l1": float((a - b).abs().mean()), "iou": float(iou.mean())}


def compare_to_reference(masks: dict[str, dict[int, Tensor]], reference: str = "original") -> dict[str, list[dict]]:
    """Per variant, one row per seed: its masks against the ``reference`` masker of the same seed; and for
    the ``reference`` itself, one row per pair of its seeds (the seed-to-seed yardstick)."""
    rows: dict[str, list[dict]] = {}
    base = masks[reference]
    rows[f"{reference}, another seed"] = [{"seeds": (s, t), **mask_agreement(base[s], base[t])}
                                          for s, t in combinations(sorted(base), 2)]
    for variant, by_seed in masks.items():
        if variant != reference:
            rows[variant] = [{"seeds": (seed, seed), **mask_agreement(by_seed[seed], base[seed])}
                             for seed in sorted(by_seed) if seed in base]
    return rows
