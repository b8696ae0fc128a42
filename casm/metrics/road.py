"""ROAD: RemOve And Debias (Rong et al., ICML 2022), in torch and batched (docs/evaluation.md).

Deletion curves set removed pixels to a constant, and a classifier can read the *shape* of the hole
(the removed region itself leaks the mask). ROAD fills removed pixels by noisy linear imputation: each
removed pixel becomes the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct, 1/12 for the
diagonal ones), known neighbours fixed, plus a little noise. The fill is the solution of a sparse linear
system per image and channel (a discrete Laplace equation on the removed pixels). The reference code
builds it with SciPy and solves it on the CPU image by image. Here a CPU does the same (SciPy's sparse
direct solve, the system built without Python loops: exact, and on a CPU 2-11x faster than the batched
iteration, benchmarks/road.py), and a GPU solves every image, channel and removal level of a batch at once by
conjugate gradients with the system's operator as a 3x3 convolution.

MoRF removes the most relevant ``p`` % of the pixels (a good map makes the score fall), LeRF the least
relevant (a good map keeps it), for p = 10, 20, ..., 90; the score is the target-class probability.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from casm.metrics.faithfulness import class_probability

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
NEIGHBOUR_WEIGHTS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
CONVENTIONS = {
    "road": "(road_lerf - road_morf) / 2, higher is better (the grad-cam package's ROADCombined)",
    "road_morf": "mean over p = 10..90 % of the target probability after the pixels with map >= the p-th "
                 "percentile (numpy's linear rule) are removed and filled by noisy linear imputation (8 "
                 "neighbours, weights 1/6 direct and 1/12 diagonal, noise sd 0.01 in normalized units; solved "
                 "exactly on a CPU, by conjugate gradients to within ~1e-3 on a GPU); lower is better",
    "road_lerf": "the same removing the pixels with 1 - map >= the p-th percentile of 1 - map; higher is better",
}


def _neighbour_sum(x: Tensor) -> Tensor:
    """(N, H, W) -> the weighted sum of each pixel's in-image neighbours (zero padding: outside counts 0).
    A depthwise convolution: on a CPU ~30x faster than the same 3x3 kernel over N one-channel images."""
    kernel = NEIGHBOUR_WEIGHTS.to(x)[None, None].expand(len(x), 1, 3, 3)
    return F.conv2d(x[None], kernel, padding=1, groups=len(x))[0]


def _pull_push(values: Tensor, known: Tensor) -> Tensor:
    """A smooth first guess for the removed pixels (N, H, W): each coarser level averages the known values
    of 2x2 blocks, the coarsest fills what is still empty, and the guesses come back up bilinearly.
    Conjugate gradients started there need ~3x fewer steps than from zero on large removed regions."""
    if min(values.shape[-2:]) <= 2 or bool(known.all()):
        fallback = (values * known).flatten(1).sum(1) / known.flatten(1).sum(1).clamp(min=1)
        return torch.where(known > 0, values, fallback[:, None, None])
    weight = F.avg_pool2d(known[:, None], 2, ceil_mode=True)[:, 0]
    coarse = F.avg_pool2d((values * known)[:, None], 2, ceil_mode=True)[:, 0] / weight.clamp(min=1e-12)
    filled = _pull_push(coarse, (weight > 0).float())
    up = F.interpolate(filled[:, None], size=values.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return torch.where(known > 0, values, up)


def linear_imputation(images: Tensor, removed: Tensor) -> Tensor:
    """Fill the ``removed`` (N, H, W) bool pixels of ``images`` (N, C, H, W); :func:`noisy_imputation` adds
    ROAD's noise.

    For a removed pixel i: ``s_i x_i - sum_{removed n} w_n x_n = sum_{kept n} w_n image_n`` with ``s_i`` the
    weight of i's in-image neighbours: symmetric positive definite on the removed pixels as long as each
    group of them touches a kept pixel (any removal of less than the whole image; a wholly removed image is
    filled with 0, the dataset mean in normalized units). On a CPU each image is solved directly
    (:func:`direct_fill`), on a GPU the whole batch by :func:`conjugate_gradient_fill`."""
    if images.device.type == "cpu":
        return torch.stack([direct_fill(image, mask) for image, mask in zip(images, removed)])
    return conjugate_gradient_fill(images, removed)


def direct_fill(image: Tensor, removed: Tensor) -> Tensor:
    """One (C, H, W) image's fill by SciPy's sparse direct solve in float64, the channels as the
    right-hand sides of one factorization: the reference's method, to within float rounding."""
    c, h, w = image.shape
    flat_removed = removed.reshape(-1).cpu().numpy()
    unknown = np.flatnonzero(flat_removed)
    values = image.detach().to("cpu", torch.float64, copy=True).numpy().reshape(c, -1)  # filled in place
    if len(unknown) == h * w:
        return torch.zeros_like(image)
    if len(unknown) == 0:
        return image.clone()
    variable = np.full(h * w, -1)
    variable[unknown] = np.arange(len(unknown))
    row, col = np.divmod(unknown, w)
    diagonal, rhs = np.zeros(len(unknown)), np.zeros((len(unknown), c))
    rows, cols, entries = [], [], []
    for (dy, dx), weight in np.ndenumerate(NEIGHBOUR_WEIGHTS.double().numpy()):
        if weight == 0:
            continue
        r, q = row + dy - 1, col + dx - 1
        inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
        equation, neighbour = np.flatnonzero(inside), r[inside] * w + q[inside]
        diagonal[equation] += weight
        also_removed = flat_removed[neighbour]
        rows.append(equation[also_removed])
        cols.append(variable[neighbour[also_removed]])
        entries.append(np.full(int(also_removed.sum()), -weight))
        rhs[equation[~also_removed]] += weight * values[:, neighbour[~also_removed]].T  # unique per offset
    system = scipy.sparse.csc_matrix((np.concatenate([diagonal, *entries]), (
        np.concatenate([np.arange(len(unknown)), *rows]), np.concatenate([np.arange(len(unknown)), *cols]))),
        shape=(len(unknown), len(unknown)))
    values[:, unknown] = scipy.sparse.linalg.spsolve(system, rhs).reshape(len(unknown), c).T
    return torch.from_numpy(values.reshape(c, h, w)).to(image)


def conjugate_gradient_fill(images: Tensor, removed: Tensor, tolerance: float = 1e-5,
                            max_iterations: int = 2000) -> Tensor:
    """The batch's fill by conjugate gradients in float32, every image, channel and level at once (on a
    GPU), stopped at a residual ``tolerance`` x the right-hand side's norm: filled values within ~2e-4 of
    the direct solve at 64 px, ~8e-4 at 224 px (benchmarks/road.py), far below ROAD's noise (0.01)."""
    n, c, h, w = images.shape
    x_img = images.float().flatten(0, 1)  # (N*C, H, W)
    unknown = removed[:, None].expand(n, c, h, w).flatten(0, 1).float()
    known = 1 - unknown
    weight_sum = _neighbour_sum(torch.ones_like(x_img[:1]))  # (1, H, W): less at the border

    def operator(v: Tensor) -> Tensor:  # restricted to the removed pixels
        return unknown * (weight_sum * v - _neighbour_sum(v * unknown))

    rhs = unknown * _neighbour_sum(x_img * known)
    solution = _pull_push(x_img, known) * unknown
    residual = rhs - operator(solution)
    direction = residual.clone()
    rs = (residual * residual).flatten(1).sum(1)
    target = (tolerance ** 2) * (rhs * rhs).flatten(1).sum(1).clamp(min=1e-30)
    for _ in range(max_iterations):
        active = rs > target
        if not active.any():
            break
        moved = operator(direction)
        alpha = torch.where(active, rs / (direction * moved).flatten(1).sum(1).clamp(min=1e-30), 0.0)
        solution += alpha[:, None, None] * direction
        residual -= alpha[:, None, None] * moved
        rs_new = (residual * residual).flatten(1).sum(1)
        beta = torch.where(active, rs_new / rs.clamp(min=1e-30), 0.0)
        direction = residual + beta[:, None, None] * direction
        rs = rs_new
    filled = x_img * known + solution * unknown
    return filled.view(n, c, h, w).to(images.dtype)


def noisy_imputation(images: Tensor, removed: Tensor, keys: Tensor, noise: float = 0.01, seed: int = 0) -> Tensor:
    """:func:`linear_imputation` plus ``noise`` x N(0, 1) on the filled pixels. ``images`` hold L removal
    levels of ``len(keys)`` images, level-major (row ``l * B + b``); each image's draws for all its levels
    come from its own generator, seeded by ``seed`` and its key (its dataset index), so its fill is the same
    in any batch and on any number of GPUs."""
    filled = linear_imputation(images, removed)
    if not noise:
        return filled
    levels = len(images) // len(keys)
    draws = torch.stack([torch.randn((levels, *images.shape[1:]), generator=torch.Generator().manual_seed(
        seed * 1_000_003 + int(k))) for k in keys.cpu()], dim=1).flatten(0, 1)  # (L * B, C, H, W), level-major
    return filled + noise * removed[:, None].to(filled) * draws.to(filled)


def percentile_removal(maps: Tensor, percentile: float, most_relevant: bool) -> Tensor:
    """(B, H, W) bool: the pixels ROAD removes at ``percentile`` (MoRF: ``map >= q_p(map)``; LeRF: the same
    on ``1 - map``), with numpy's linear-interpolation percentile."""
    scores = maps if most_relevant else 1 - maps
    flat = scores.flatten(1).double()
    threshold = torch.quantile(flat, percentile / 100, dim=1, keepdim=True)
    return (flat >= threshold).view_as(maps)


@torch.no_grad()
def road_scores(model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor, keys: Tensor | None = None,
                percentiles: tuple[int, ...] = PERCENTILES, noise: float = 0.01, seed: int = 0) -> dict[str, Tensor]:
    """Per image (B,): ``road_morf`` and ``road_lerf`` (the target probability averaged over the removal
    levels) and ``road`` = (LeRF - MoRF) / 2. Every image and level is imputed in one batched solve, with
    each image's noise seeded by its ``keys`` entry (its dataset index; default its position)."""
    maps = maps.squeeze(1) if maps.dim() == 4 else maps
    b, levels = len(images), 2 * len(percentiles)
    keys = torch.arange(b) if keys is None else keys
    removed = torch.cat([percentile_removal(maps, p, most) for most in (True, False) for p in percentiles])
    filled = noisy_imputation(images.repeat(levels, 1, 1, 1), removed, keys, noise, seed)
    probs = class_probability(model, filled, targets.repeat(levels)).view(2, len(percentiles), b)
    morf, lerf = probs.mean(dim=1)
    return {"road_morf": morf, "road_lerf": lerf, "road": (lerf - morf) / 2}
