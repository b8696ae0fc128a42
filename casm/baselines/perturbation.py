"""RISE: saliency from the classifier's outputs on randomly masked copies of the image (docs/evaluation.md).

No layer, no gradient: a black-box method, and so the perturbation baseline a masker trained to
remove evidence is most directly compared with. Its cost is one forward pass per (image, mask).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from casm.baselines.base import SaliencyMethod, min_max
from casm.models.modes import evaluation_mode
from casm.models.outputs import logits_of


def rise_masks(count: int, size: tuple[int, int], grid: int = 7, keep: float = 0.5, seed: int = 0,
               device: torch.device | str = "cpu") -> Tensor:
    """RISE's masks, (count, H, W) in [0, 1]: a ``grid`` x ``grid`` field of cells, each kept with
    probability ``keep``, upsampled bilinearly to ``(grid + 1)`` cells of ``ceil(H / grid)`` pixels and
    cropped to H x W at a random offset of less than one cell (smooth masks, no grid-aligned edges).
    The same seed gives the same masks on every machine (drawn on the CPU)."""
    height, width = size
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    generator = torch.Generator().manual_seed(seed)
    cells = (torch.rand(count, 1, grid, grid, generator=generator) < keep).float()
    up = F.interpolate(cells, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0].clamp_(0, 1)  # (rounding can leave 1 + 1e-7)
    shift_y = torch.randint(0, cell_h, (count,), generator=generator)
    shift_x = torch.randint(0, cell_w, (count,), generator=generator)
    rows = shift_y[:, None] + torch.arange(height)  # (count, H)
    cols = shift_x[:, None] + torch.arange(width)  # (count, W)
    masks = up[torch.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return masks.to(device)


class RISE(SaliencyMethod):
    """RISE (Petsiuk et al., BMVC 2018, arXiv:1806.07421): ``S_c = sum_i p_c(x ⊙ M_i) M_i / (N keep)``,
    the masks weighted by the class probability the classifier gives each masked copy; then min-max to
    [0, 1] as every other method. Masked pixels become 0 in normalized space, i.e. the dataset mean.

    ``chunk_size`` (image, mask) pairs run per forward pass, so memory stays bounded for any batch."""

    name = "rise"

    def __init__(self, model: nn.Module, target_layer: str | None = None, num_masks: int = 2000, grid: int = 7,
                 keep: float = 0.5, seed: int = 0, chunk_size: int = 256, normalize: bool = True) -> None:
        # target_layer: accepted so every method is built alike; RISE perturbs the input, not a layer
        self.model, self.num_masks, self.grid, self.keep, self.seed = model, num_masks, grid, keep, seed
        self.chunk_size, self.normalize = chunk_size, normalize
        self._masks: Tensor | None = None

    def masks(self, size: tuple[int, int], device: torch.device) -> Tensor:
        if self._masks is None or self._masks.shape[1:] != size or self._masks.device != device:
            self._masks = rise_masks(self.num_masks, size, self.grid, self.keep, self.seed, device)
        return self._masks

    def __call__(self, images: Tensor, class_idx: int | Tensor | None = None) -> Tensor:
        """(B, 3, H, W) normalized images -> (B, H, W) maps in [0, 1]."""
        batch, size = len(images), tuple(images.shape[-2:])
        masks = self.masks(size, images.device)  # (N, H, W)
        per_pass = max(1, self.chunk_size // batch)  # masks per forward pass: batch x per_pass pairs
        with evaluation_mode(self.model), torch.inference_mode():
            targets = self._targets(logits_of(self.model(images)), class_idx)
            saliency = torch.zeros(batch, size[0] * size[1], device=images.device)
            for start in range(0, self.num_masks, per_pass):
                chunk = masks[start: start + per_pass]  # (n, H, W)
                masked = (images[:, None] * chunk[None, :, None]).flatten(0, 1)  # (B*n, 3, H, W)
                probs = logits_of(self.model(masked)).float().softmax(dim=1).view(batch, len(chunk), -1)
                target_probs = probs.gather(2, targets.view(batch, 1, 1).expand(-1, len(chunk), 1))[..., 0]
                saliency += target_probs @ chunk.flatten(1).float()  # (B, n) @ (n, H*W)
            saliency = (saliency / (self.num_masks * self.keep)).view(batch, *size)
        return min_max(saliency) if self.normalize else saliency
