"""What each ``casm.fill`` costs per batch of masked-out images, as a ratio to the mean fill (the paper's)
and to a plain classifier step measured in the same run: is Telea inpainting (OpenCV, CPU, one image at a
time) fast enough to train with?

    python benchmarks/fills.py                       # 64 px batch 64 (built-in data) and 224 px batch 128
    python benchmarks/fills.py --device cuda         # the tensor fills on the GPU (Telea goes via the CPU)

Masks are smooth random blobs covering ~20 % of the image, like a trained masker's.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import seconds_per_call

from casm.baselines.base import logits_of
from casm.fills import FILLS, remove_masked
from casm.models import ResNetClassifier


def blob_masks(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    coarse = torch.rand(batch, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth > torch.quantile(smooth.flatten(1), 0.8, dim=1).view(-1, 1, 1, 1)).float() * 0.9 + 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    for size, batch, width in ((64, 64, 32), (224, 128, 64)):
        images = torch.randn(batch, 3, size, size, device=args.device)
        masks = blob_masks(batch, size).to(args.device)
        labels = torch.randint(0, 10, (batch,), device=args.device)
        model = ResNetClassifier("resnet18", 10, width).to(args.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def plain_step() -> None:
            optimizer.zero_grad()
            F.cross_entropy(logits_of(model(images)), labels).backward()
            optimizer.step()

        step = seconds_per_call(plain_step, args.repeats, args.device)
        times = {kind: seconds_per_call(lambda k=kind: remove_masked(images, masks, k), args.repeats, args.device)
                 for kind in FILLS}
        print(f"\n{size} px, batch {batch} ({args.device}); plain ResNet-18 (width {width}) step {step * 1e3:.1f} ms")
        print("| fill | ms per batch | × mean fill | % of a plain step |\n|---|---|---|---|")
        for kind, seconds in times.items():
            print(f"| {kind} | {seconds * 1e3:.2f} | {seconds / times['mean']:.1f} | {100 * seconds / step:.1f} |")


if __name__ == "__main__":
    main()
