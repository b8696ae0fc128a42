"""Gradient-based CAMs: Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM and ShapleyCAM
(docs/evaluation.md). Each is a different reading of the same gradient ``g = dy^c/dA``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from casm.baselines.base import CAMMethod


def _class_score_gradient(activation: Tensor, scores: Tensor, create_graph: bool = False) -> Tensor:
    """d score_b / d A_b for each image's own score (B,), as (B, K, h, w). Images are independent in eval
    mode, so one backward pass of the summed scores gives every image's gradient."""
    (grad,) = torch.autograd.grad(scores.sum(), activation, create_graph=create_graph)
    return grad


def _target_logit(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.gather(1, targets[:, None])[:, 0]


def _target_gradient(activation: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
    """``g = dy^c / dA``: the gradient of each image's target logit, (B, K, h, w)."""
    return _class_score_gradient(activation, _target_logit(logits, targets))


class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al., 2017, arXiv:1610.02391): ``alpha_k = mean_ij dy^c/dA^k_ij``,
    ``M = ReLU(sum_k alpha_k A^k)``."""

    name = "gradcam"
    needs_gradients = True

    def channel_weights(self, activation, logits, targets, images):
        return _target_gradient(activation, logits, targets).mean(dim=(2, 3))


class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ (Chattopadhyay et al., 2018, arXiv:1710.11063, eq. 19 with the exponential-score
    simplification): ``a_ij = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (0 where g = 0),
    ``w_k = sum_ij a_ij ReLU(g_ij)``."""

    name = "gradcampp"
    needs_gradients = True
    eps = 1e-6  # as in the grad-cam package, so the two agree where the denominator is tiny

    def channel_weights(self, activation, logits, targets, images):
        g = _target_gradient(activation, logits, targets)
        g2 = g.pow(2)
        sum_a = activation.detach().sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g2 * g + self.eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(g)).sum(dim=(2, 3))


class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu et al., 2020, arXiv:2008.02312): the gradient averaged with the activation's own
    spatial distribution as weights, ``w_k = sum_ij (A^k_ij / sum_ab A^k_ab) g_ij``."""

    name = "xgradcam"
    needs_gradients = True
    eps = 1e-7  # as in the grad-cam package: an all-zero channel gets weight 0

    def channel_weights(self, activation, logits, targets, images):
        g = _target_gradient(activation, logits, targets)
        a = activation.detach()
        return (g * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + self.eps)


class HiResCAM(CAMMethod):
    """HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891): ``M = ReLU(sum_k g^k ⊙ A^k)``, the gradient
    multiplied position by position instead of averaged first, so the map only marks locations the
    score actually depends on (after a GAP + linear head the gradient is flat and this is Grad-CAM)."""

    name = "hirescam"
    needs_gradients = True

    def saliency(self, activation, logits, targets, images):
        g = _target_gradient(activation, logits, targets)
        return (g * activation.detach()).sum(dim=1)


class LayerCAM(CAMMethod):
    """LayerCAM (Jiang et al., 2021, IEEE TIP 30): ``M = ReLU(sum_k ReLU(g^k) ⊙ A^k)``, only positive
    gradients and each position weighted on its own (finer maps at earlier layers)."""

    name = "layercam"
    needs_gradients = True

    def saliency(self, activation, logits, targets, images):
        g = _target_gradient(activation, logits, targets)
        return (F.relu(g) * activation.detach()).sum(dim=1)


class ShapleyCAM(CAMMethod):
    """ShapleyCAM (Cai et al., ICLR 2025, arXiv:2501.06261): ``w_k = mean_ij (g - H A / 2)^k_ij``, a
    second-order estimate of each channel's Shapley value, with ``H A`` the Hessian-vector product of
    the score along the activation. The score is the paper's ReST, ``y^c + log softmax(y)^c`` (the
    logit alone is linear in A after a GAP + linear head, where ``H A = 0`` and the method is Grad-CAM)."""

    name = "shapleycam"
    needs_gradients = True

    def channel_weights(self, activation, logits, targets, images):
        rest = _target_logit(logits, targets) + _target_logit(F.log_softmax(logits, dim=1), targets)
        g = _class_score_gradient(activation, rest, create_graph=True)
        (hessian_times_a,) = torch.autograd.grad(g, activation, grad_outputs=activation.detach(), allow_unused=True)
        if hessian_times_a is None:  # the score is linear in A (no path with curvature after the layer)
            hessian_times_a = torch.zeros_like(g)
        return (g - 0.5 * hessian_times_a).detach().mean(dim=(2, 3))
