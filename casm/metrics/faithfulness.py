"""Does the map point at what the classifier uses? (docs/evaluation.md). Batched: each function takes a batch
of images and maps and returns one score per image; the harness averages them with torchmetrics.

Images are normalized tensors, so "remove" means "set to 0" (the dataset mean colour).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
from casm.fills import keep_masked, remove_masked, telea_inpaint
from casm.metrics.localization import box_masks
from casm.models.outputs import logits_of

CONVENTIONS = {
    "deletion": "AUC (trapezoid on [0, 1]) of the target probability while pixels are set to 0 (the dataset mean) "
                "in order of saliency, ceil(HW / faithfulness_steps) per step, ties by position",
    "insertion": "the same while pixels of the image replace a Gaussian blur of it (kernel 11, sigma 5)",
    "acc_masked_in": "top-1 % of the explained classifier (no suffix) or of judge NAME (@NAME) on b*x, b the "
                     "map binarized (eval binarization/alpha), removed pixels set by eval fill (default: the "
                     "training run's casm.fill; mean = 0 in normalized units); over images of classes it knows",
    "acc_masked_out": "the same on (1-b)*x",
    "acc_inpainted": "the same on x with the pixels of b filled by OpenCV's Telea inpainting (radius 3, 8-bit pixels)",
}


@torch.no_grad()
def class_probability(model: nn.Module, images: Tensor, targets: Tensor, chunk: int = 256) -> Tensor:
    """softmax(model(images))[target] per image, in chunks."""
    out = []
    for start in range(0, len(images), chunk):
        logits = logits_of(model(images[start: start + chunk])).float()
        out.append(logits.softmax(dim=1).gather(1, targets[start: start + chunk, None])[:, 0])
    return torch.cat(out)


def _pixel_ranks(maps: Tensor) -> Tensor:
    """(B, H, W) -> (B, H, W): 0 for the most salient pixel, 1 for the next, ... (ties by position)."""
    flat = maps.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=maps.device).expand_as(order))
    return ranks.view_as(maps)


@torch.no_grad()
def deletion_insertion(model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor, mode: str = "deletion",
                       steps: int = 32, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """RISE's causal metrics (Petsiuk et al., 2018). Pixels go in order of saliency, ``ceil(HW/steps)``
    per step: *deletion* sets them to the baseline (0), starting from the image; *insertion* reveals
    them, starting from a blurred image (Gaussian, kernel 11, sigma 5). Returns (curves (B, steps+1)
    of target-class probabilities, AUC (B,) by the trapezoid rule on [0, 1])."""
    b, _, h, w = images.shape
    per_step = math.ceil(h * w / steps)
    ranks = _pixel_ranks(maps.squeeze(1) if maps.dim() == 4 else maps)  # (B, H, W)
    if mode == "deletion":
        start, end = images, torch.zeros_like(images)
    elif mode == "insertion":
        kernel = min(11, 2 * ((min(h, w) - 1) // 2) + 1)  # reflect padding needs a kernel smaller than the image
        start, end = gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[5.0, 5.0]), images
    else:
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    curves = torch.empty(b, steps + 1, device=images.device)
    for i in range(b):
        changed = torch.stack([(ranks[i] < s * per_step) for s in range(steps + 1)]).unsqueeze(1).float()
        variants = start[i] * (1 - changed) + end[i] * changed  # (steps+1, 3, H, W)
        curves[i] = class_probability(model, variants, targets[i].expand(steps + 1), chunk)
    auc = (curves[:, 1:] + curves[:, :-1]).sum(dim=1) / (2 * steps)
    return curves, auc


@torch.no_grad()
def average_drop_increase(model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: drop ``max(0, Y - O) / Y * 100`` and increase ``[Y < O] * 100``, with Y the class
    probability on the image and O on the image multiplied by the map (Chattopadhyay et al., 2018)."""
    m = maps if maps.dim() == 4 else maps[:, None]
    y = class_probability(model, images, targets)
    o = class_probability(model, images * m, targets)
    return (y - o).clamp(min=0) / y.clamp(min=1e-12) * 100, (y < o).float() * 100


def pointing_game(maps: Tensor, gt_boxes: Tensor, gt_valid: Tensor, tolerance: int = 0) -> Tensor:
    """(B,) 1 if the map's maximum lies in a ground-truth box grown by ``tolerance`` pixels (the
    original pointing game uses 15), else 0 (Zhang et al., 2016)."""
    m = maps.squeeze(1) if maps.dim() == 4 else maps
    grown = gt_boxes + torch.tensor([-tolerance, -tolerance, tolerance, tolerance], device=gt_boxes.device)
    inside = box_masks(grown, gt_valid, *m.shape[-2:]).any(dim=1).flatten(1)  # (B, HW)
    peak = m.flatten(1).argmax(dim=1)
    return inside.gather(1, peak[:, None])[:, 0].float()


def energy_pointing_game(maps: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
    """(B,) share of the map's mass inside the union of the boxes (Score-CAM paper)."""
    m = (maps.squeeze(1) if maps.dim() == 4 else maps).float()
    inside = box_masks(gt_boxes, gt_valid, *m.shape[-2:]).any(dim=1).float()
    return (m * inside).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1e-12)


def masked_variants(images: Tensor, binary: Tensor, inpaint: bool = True, fill: str = "mean") -> dict[str, Tensor]:
    """What the judges see (docs/evaluation.md): the masked-in ``b*x``, the masked-out ``(1-b)*x`` and the
    masked-out image inpainted by OpenCV's Telea method (radius 3, uint8 pixel space). With another ``fill``
    (a run trained with ``casm.fill``), the removed pixels of the first two get it. Made once per batch,
    however many judges score them: inpainting is the slow part."""
    b = (binary if binary.dim() == 4 else binary[:, None]).float()
    variants = {"masked_in": keep_masked(images, b, fill), "masked_out": remove_masked(images, b, fill)}
    if inpaint:
        variants["inpainted"] = telea_inpaint(images, b[:, 0] > 0.5, IMAGENET_MEAN, IMAGENET_STD)
    return variants


@torch.no_grad()
def judge_hits(model: nn.Module, variants: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
    """Per variant (B,): is ``model`` right on it?"""
    return {name: (logits_of(model(x)).argmax(1) == labels).float() for name, x in variants.items()}
