"""ROAD's noisy linear imputation, three ways in the same run: casm's direct fill (SciPy's sparse solve per
image, what a CPU runs), casm's batched conjugate-gradient fill (what a GPU runs; here on --device), and the
grad-cam package's (SciPy, one image and level at a time, on the CPU). For each, how far its filled
images are from grad-cam's and ms per image for all 18 levels (MoRF and LeRF at 10 %, ..., 90 %).

    python benchmarks/road.py                        # 64 px (the built-in data) and 224 px, on the CPU
    python benchmarks/road.py --device cuda          # the conjugate-gradient fill on the GPU

Maps are smooth random fields (bilinearly upsampled 8x8 noise), like a CAM's; noise off, so all three solve
the same system. The classifier's forward passes, the same for all, are not timed.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from casm.metrics.road import PERCENTILES, conjugate_gradient_fill, direct_fill, percentile_removal


def smooth_maps(count: int, size: int, seed: int = 0) -> torch.Tensor:
    coarse = torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _timed(fill, device: str) -> tuple[torch.Tensor, float]:
    if device == "cuda":
        fill()  # warm-up: CUDA kernels, the caching allocator
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fill()
    if device == "cuda":
        torch.cuda.synchronize()
    return out.cpu(), time.perf_counter() - start


def compare(images: torch.Tensor, maps: torch.Tensor, device: str) -> dict[str, tuple[float, float]]:
    """fill -> (largest difference to grad-cam's fill, ms per image) over every image and level."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    removed = torch.cat([percentile_removal(maps, p, most) for most in (True, False) for p in PERCENTILES])
    stacked = images.repeat(2 * len(PERCENTILES), 1, 1, 1)
    imputer = NoisyLinearImputer(noise=0.0)
    reference, reference_s = _timed(lambda: torch.stack([imputer(image, (~mask).float())
                                                         for image, mask in zip(stacked, removed)]), "cpu")
    direct, direct_s = _timed(lambda: torch.stack([direct_fill(i, m) for i, m in zip(stacked, removed)]), "cpu")
    iterative, iterative_s = _timed(lambda: conjugate_gradient_fill(stacked.to(device), removed.to(device)), device)
    per_image = 1e3 / len(images)
    return {"grad-cam (CPU)": (0.0, reference_s * per_image),
            "casm direct (CPU)": (float((direct - reference).abs().max()), direct_s * per_image),
            f"casm conjugate gradients ({device})": (float((iterative - reference).abs().max()),
                                                     iterative_s * per_image)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--sizes", default="64,224")
    args = parser.parse_args()
    print(f"ROAD fill, {args.images} images x {2 * len(PERCENTILES)} levels, {torch.get_num_threads()} CPU threads")
    print("| size | fill | max abs difference to grad-cam's | ms/image | grad-cam's time / this |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        images = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(1))
        results = compare(images, smooth_maps(args.images, size), args.device)
        reference_ms = results["grad-cam (CPU)"][1]
        for fill, (difference, ms) in results.items():
            print(f"| {size} px | {fill} | {difference:.1e} | {ms:.0f} | {reference_ms / ms:.2f}x |")


if __name__ == "__main__":
    main()
