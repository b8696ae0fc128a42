"""Gradient-based CAMs: Grad-CAM and Grad-CAM++ (docs/evaluation.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from casm.baselines.base import CAMMethod


def _class_score_gradient(activation: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
    """d y^c / d A for each image's own target class, (B, K, h, w). Images are independent in eval
    mode, so one backward pass of the summed scores gives every image's gradient."""
    scores = logits.gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(scores, activation)
    return grad


class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al., 2017, arXiv:1610.02391): ``alpha_k = mean_ij dy^c/dA^k_ij``,
    ``M = ReLU(sum_k alpha_k A^k)``."""

    name = "gradcam"
    needs_gradients = True

    def channel_weights(self, activation, logits, targets, images):
        return _class_score_gradient(activation, logits, targets).mean(dim=(2, 3))


class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ (Chattopadhyay et al., 2018, arXiv:1710.11063, eq. 19 with the exponential-score
    simplification): ``a_ij = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (0 where g = 0),
    ``w_k = sum_ij a_ij ReLU(g_ij)``."""

    name = "gradcampp"
    needs_gradients = True
    eps = 1e-6  # as in the grad-cam package, so the two agree where the denominator is tiny

    def channel_weights(self, activation, logits, targets, images):
        g = _class_score_gradient(activation, logits, targets)
        g2 = g.pow(2)
        sum_a = activation.detach().sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g2 * g + self.eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(g)).sum(dim=(2, 3))
