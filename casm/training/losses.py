"""The CASM masker objective (SPEC 1.2, step 8)."""

from __future__ import annotations

from dataclasses import dataclass

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


def masker_loss(logits_out: Tensor, labels: Tensor, clean_correct: Tensor, mask: Tensor, lambda_r: float,
                score: str = "E") -> MaskerLoss:
    """``-mean_i[correct_i * S_i] + lambda_R * mean_i[confused_i * mean(mask_i)]``.

    ``S_i`` is the entropy of the evaluator's prediction on the masked-out image (score "E") or its
    cross-entropy with the label (score "C"). The L1 term only counts images whose evidence the mask
    really removed (*confused*: right when clean, wrong when masked out): the adaptive lambda_R rule,
    under which masks grow until they fool the classifier, then shrink.
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
    area_term = (confused.float() * mask.flatten(1).mean(dim=1)).mean()
    return MaskerLoss(score_term + lambda_r * area_term, score_term.detach(), area_term.detach(), confused)


def remove_masked(images: Tensor, mask: Tensor) -> Tensor:
    """Masked-out images ``(1 - m) * x``: in normalized space a zero is the mean colour."""
    return images * (1 - mask)
