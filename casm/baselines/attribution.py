"""Gradient attributions through Captum (docs/evaluation.md): the pixel-level methods a user of Captum
expects beside the CAMs, computed by Captum itself rather than rewritten here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from casm.baselines.base import SaliencyMethod, min_max
from casm.models.modes import evaluation_mode
from casm.models.outputs import logits_of


class IntegratedGradients(SaliencyMethod):
    """Integrated Gradients (Sundararajan et al., ICML 2017) by ``captum.attr.IntegratedGradients``: the
    gradient averaged along the straight path from a baseline (here the dataset mean, 0 after
    normalization) to the image, times the image minus the baseline; ``steps`` points of Captum's
    Gauss-Legendre rule. The map is the attribution summed over colour channels, its positive part (the
    evidence *for* the class, as CAMs keep after their ReLU), then min-max to [0, 1]."""

    name = "integrated_gradients"

    def __init__(self, model: nn.Module, target_layer: str | None = None, steps: int = 32, chunk_size: int = 256,
                 normalize: bool = True) -> None:
        # target_layer: accepted so every method is built alike; IG attributes to the input pixels
        self.model, self.steps, self.chunk_size, self.normalize = model, steps, chunk_size, normalize

    def __call__(self, images: Tensor, class_idx: int | Tensor | None = None) -> Tensor:
        """(B, 3, H, W) normalized images -> (B, H, W) maps in [0, 1]."""
        from captum.attr import IntegratedGradients as CaptumIG  # deferred: Captum's import takes seconds

        with evaluation_mode(self.model), torch.enable_grad():
            with torch.no_grad():
                targets = self._targets(logits_of(self.model(images)), class_idx)
            attribution = CaptumIG(lambda x: logits_of(self.model(x))).attribute(
                images.detach(), baselines=torch.zeros_like(images), target=targets, n_steps=self.steps,
                internal_batch_size=max(len(images), self.chunk_size))
        maps = F.relu(attribution.detach().sum(dim=1))
        return min_max(maps) if self.normalize else maps
