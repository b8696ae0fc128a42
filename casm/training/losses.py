"""The CASM masker objective (docs/training.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy of softmax(logits), (B, K) -> (B,), computed stably in log space."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@dataclass
class MaskerLoss:
    total: Tensor  # the scalar to minimize
    score: Tensor  # the score term alone
    area: Tensor  # the gated L1 term before lambda_R
    confused: Tensor  # (B,) bool: right on the clean image, wrong on the masked-out one
    masked_in: Tensor  # the masked-in cross-entropy before lambda_in (0 when off)
    tv: Tensor  # the mask's total variation before lambda_tv (0 when off)
    logit_excess: Tensor  # the logits' squared excess over the bound (0 when off)


def total_variation(mask: Tensor) -> Tensor:
    """Anisotropic total variation of (B, 1, H, W) masks, averaged over the batch:
    ``mean_i [ mean_{h,w} |m[h+1, w] - m[h, w]| + mean_{h,w} |m[h, w+1] - m[h, w]| ]``."""
    vertical = (mask[:, :, 1:, :] - mask[:, :, :-1, :]).abs().flatten(1).mean(dim=1)
    horizontal = (mask[:, :, :, 1:] - mask[:, :, :, :-1]).abs().flatten(1).mean(dim=1)
    return (vertical + horizontal).mean()


def logit_excess(mask_logits: Tensor, bound: float) -> Tensor:
    """``mean(relu(|z| - bound)^2)``: zero while every mask logit is within ±bound, and a pull back
    that grows with the distance (not a clamp, which would cut the gradient it is meant to keep)."""
    return F.relu(mask_logits.abs() - bound).square().mean()


def masker_loss(logits_out: Tensor, labels: Tensor, clean_correct: Tensor, mask: Tensor, lambda_r: float,
                score: str = "E", logits_in: Tensor | None = None, lambda_in: float = 0.0,
                lambda_tv: float = 0.0, area_gate: str = "confused", mask_logits: Tensor | None = None,
                logit_bound: float | None = None) -> MaskerLoss:
    """``-mean_i[correct_i * S_i] + lambda_R * mean_i[confused_i * mean(mask_i)]``
    ``+ lambda_in * mean_i CE(f(m_i * x_i), y_i) + lambda_tv * TV(m)``.

    ``S_i`` is the entropy of the evaluator's prediction on the masked-out image (score "E") or its
    cross-entropy with the label (score "C"). The L1 term only counts images whose evidence the mask
    really removed (*confused*: right when clean, wrong when masked out): the adaptive lambda_R rule,
    under which masks grow until they fool the classifier, then shrink. The last two terms are off by
    default (Phang et al. 2020's recipe: ``logits_in`` = the evaluator on the masked-in images, every
    image of the batch, so that what the mask keeps suffices to classify; a total-variation penalty).
    ``area_gate="all"`` counts every image's area instead of the confused ones' only: without it, images
    a classifier still recognizes when masked (one that memorized a small training set) pay nothing for
    their mask, which can then grow until the sigmoid saturates (docs/training.md).
    With ``logit_bound``, ``+ logit_excess(mask_logits, logit_bound)`` (weight 1) keeps the mask's
    logits where the sigmoid still has a slope, so a mask pushed to all-on or all-off can come back.
    """
    correct = clean_correct.float()
    confused = clean_correct & (logits_out.argmax(dim=1) != labels)
    if score == "E":
        per_image = entropy(logits_out)
    elif score == "C":
        per_image = F.cross_entropy(logits_out, labels, reduction="none")
    else:
        raise ValueError(f"score must be 'E' or 'C', got {score!r}")
    score_term = -(correct * per_image).mean()
    if area_gate == "confused":
        gate = confused.float()
    elif area_gate == "all":
        gate = torch.ones_like(correct)
    else:
        raise ValueError(f"area_gate must be 'confused' or 'all', got {area_gate!r}")
    area_term = (gate * mask.flatten(1).mean(dim=1)).mean()
    total = score_term + lambda_r * area_term
    in_term = tv_term = excess_term = torch.zeros((), device=mask.device)
    if lambda_in:
        in_term = F.cross_entropy(logits_in, labels)
        total = total + lambda_in * in_term
    if lambda_tv:
        tv_term = total_variation(mask)
        total = total + lambda_tv * tv_term
    if logit_bound is not None:
        excess_term = logit_excess(mask_logits, logit_bound)
        total = total + excess_term
    return MaskerLoss(total, score_term.detach(), area_term.detach(), confused, in_term.detach(), tv_term.detach(),
                      excess_term.detach())
