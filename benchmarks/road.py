"""ROAD's noisy linear imputation: casm's batched conjugate-gradient fill against the grad-cam package's
(SciPy's sparse direct solve, one image and removal level at a time, on the CPU), in the same run: how far
apart the filled images are, and ms per image for all 18 levels (MoRF and LeRF at 10 %, ..., 90 %).

    python benchmarks/road.py                        # 64 px (the built-in data) and 224 px, on the CPU
    python benchmarks/road.py --device cuda          # casm's fill on the GPU (the reference stays on the CPU)

Maps are smooth random fields (bilinearly upsampled 8x8 noise), like a CAM's; noise off, so both solve the
same system. The classifier's forward passes, the same for both, are not timed.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from casm.metrics.road import PERCENTILES, linear_imputation, percentile_removal


def smooth_maps(count: int, size: int, seed: int = 0) -> torch.Tensor:
    coarse = torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def compare(images: torch.Tensor, maps: torch.Tensor, device: str, repeats: int = 2) -> dict[str, float]:
    """Both fills of every image at every level: the largest difference and each one's seconds per image."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    removed = torch.cat([percentile_removal(maps, p, most) for most in (True, False) for p in PERCENTILES])
    stacked = images.repeat(2 * len(PERCENTILES), 1, 1, 1)
    on_device, removed_on_device = stacked.to(device), removed.to(device)
    ours = linear_imputation(on_device, removed_on_device)  # warm-up (CUDA kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        ours = linear_imputation(on_device, removed_on_device)
    if device == "cuda":
        torch.cuda.synchronize()
    ours_s = (time.perf_counter() - start) / repeats
    imputer = NoisyLinearImputer(noise=0.0)
    start = time.perf_counter()
    theirs = torch.stack([imputer(image, (~mask).float()) for image, mask in zip(stacked, removed)])
    theirs_s = time.perf_counter() - start
    return {"max_abs_difference": float((ours.cpu() - theirs).abs().max()),
            "ours_ms_per_image": 1e3 * ours_s / len(images), "reference_ms_per_image": 1e3 * theirs_s / len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--sizes", default="64,224")
    args = parser.parse_args()
    print(f"ROAD fill, {args.images} images x {2 * len(PERCENTILES)} levels; casm on {args.device}, grad-cam "
          f"(SciPy) on the CPU, {torch.get_num_threads()} CPU threads")
    print("| size | max abs difference | casm ms/image | grad-cam ms/image | grad-cam / casm |\n|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        images = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(1))
        r = compare(images, smooth_maps(args.images, size), args.device)
        print(f"| {size} px | {r['max_abs_difference']:.1e} | {r['ours_ms_per_image']:.0f} | "
              f"{r['reference_ms_per_image']:.0f} | {r['reference_ms_per_image'] / r['ours_ms_per_image']:.2f}x |")


if __name__ == "__main__":
    main()
