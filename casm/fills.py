"""What replaces the pixels a mask removes (``casm.fill``), the same in training and in evaluation.

Images are normalized, so the dataset's mean colour is 0. The choice matters because a classifier can
read the *shape* of a constant hole (Phang et al. 2020 tried an inpainting model instead):

* ``mean``  the mean colour (0), the CASM paper's and casm's default;
* ``blur``  a Gaussian blur of the image itself (sigma = image size / 16): colours stay, detail goes;
* ``telea`` OpenCV's Telea inpainting of the removed region (``m > 0.5``), on the CPU, one image per core;
* ``noise`` Gaussian noise with the data's spread (N(0, 1) in normalized space), from the global RNG.

The fill is a constant for the gradient: the mask's gradient flows through the blend
``x * keep + fill * (1 - keep)``, not through the fill.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
from casm.errors import UserError

FILLS = ("mean", "blur", "telea", "noise")


def fill_for(images: Tensor, removed: Tensor, kind: str) -> Tensor | None:
    """The values for the pixels ``removed`` (B, 1, H, W) in [0, 1] takes away; ``None`` for ``mean`` (0)."""
    if kind == "mean":
        return None
    with torch.no_grad():
        if kind == "blur":
            return blur(images)
        if kind == "telea":
            return telea_inpaint(images, removed[:, 0] > 0.5, IMAGENET_MEAN, IMAGENET_STD)
        if kind == "noise":
            return torch.randn_like(images)
    raise UserError(f"casm.fill={kind!r} is not one of {', '.join(FILLS)}")


def blur(images: Tensor) -> Tensor:
    """torchvision's ``gaussian_blur`` (sigma = size / 16, kernel to 2 sigma, reflected edges) done as two 1-D
    passes: the same result, but k + k instead of k * k multiplications per pixel (224 px: 57 x 57)."""
    sigma = max(1.0, min(images.shape[-2:]) / 16)
    size = min(2 * math.ceil(2 * sigma) + 1, 2 * ((min(images.shape[-2:]) - 1) // 2) + 1)
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, [size // 2] * 4, mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)


def blend(images: Tensor, keep: Tensor, fill: Tensor | None) -> Tensor:
    """``images`` where ``keep`` is 1, ``fill`` (0 when ``None``) where it is 0."""
    kept = images * keep
    return kept if fill is None else kept + fill * (1 - keep)


def remove_masked(images: Tensor, mask: Tensor, kind: str = "mean") -> Tensor:
    """Masked-out images: the mask's region replaced by the fill (``(1 - m) * x`` for ``mean``)."""
    return blend(images, 1 - mask, fill_for(images, mask, kind))


def keep_masked(images: Tensor, mask: Tensor, kind: str = "mean") -> Tensor:
    """Masked-in images: everything but the mask's region replaced by the fill (``m * x`` for ``mean``)."""
    return blend(images, mask, fill_for(images, 1 - mask, kind))


def telea_inpaint(images: Tensor, holes: Tensor, mean, std) -> Tensor:
    """Fill ``holes`` (B, H, W) bool of normalized images with cv2.inpaint(INPAINT_TELEA, radius 3)."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    pixels = ((images * s + m).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    masks = holes.cpu().numpy().astype(np.uint8)
    def inpaint(i: int) -> np.ndarray:
        return cv2.inpaint(np.ascontiguousarray(pixels[i]), masks[i], 3, cv2.INPAINT_TELEA)

    # cv2.inpaint is single-threaded and releases the GIL: one image per core
    with ThreadPoolExecutor(max_workers=max(1, min(len(pixels), os.cpu_count() or 1))) as pool:
        filled = np.stack(list(pool.map(inpaint, range(len(pixels)))))
    out = torch.from_numpy(filled).to(images.device).permute(0, 3, 1, 2).float() / 255
    return (out - m) / s
