"""Time each CAM baseline against the grad-cam package (and CAM against torchcam, which grad-cam
lacks) on the same model and batch, in the same run; print per-image times and ratios.

    python benchmarks/baselines.py                                   # ResNet-18, 64 px (the default run's model)
    python benchmarks/baselines.py --arch resnet50 --size 224 --batch 4 --scorecam-images 1
"""

from __future__ import annotations

import argparse

import torch
from timing import seconds_per_call
from torch import nn

from casm.baselines import BASELINES, LogitsOnly
from casm.models import ResNetClassifier


def seconds_per_image(fn, images: int, repeats: int, device: str) -> float:
    return seconds_per_call(fn, repeats, device) / images


def reference(name: str, model: nn.Module, layer: nn.Module, x: torch.Tensor, chunk: int | None):
    wrapped = LogitsOnly(model)
    if name == "cam":
        from torchcam.methods import CAM

        extractor = CAM(wrapped, target_layer="model.trunk.layer4", fc_layer="model.fc")

        def run():
            with torch.no_grad():
                scores = wrapped(x)
            maps = extractor(class_idx=scores.argmax(1).tolist(), scores=scores)[0]
            return nn.functional.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear")

        return run, extractor.remove_hooks
    import pytorch_grad_cam as pgc

    cls = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "scorecam": pgc.ScoreCAM}[name]
    method = cls(model=wrapped, target_layers=[layer])
    if chunk is not None:  # None: the package's own default (16 masked images per forward for Score-CAM)
        method.batch_size = chunk
    return (lambda: method(input_tensor=x, targets=None)), method.activations_and_grads.release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--scorecam-images", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=256, help="Score-CAM forward batch, both implementations")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResNetClassifier(args.arch, 10).eval().to(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    print(f"{args.arch} {args.size}px on {args.device}; batch {args.batch} (Score-CAM: {args.scorecam_images} images)")
    print(f"{'method':12s} {'casm ms/img':>12s} {'reference ms/img':>17s} {'speed-up':>9s}  reference")
    for name, cls in BASELINES.items():
        xs = x[: args.scorecam_images] if name == "scorecam" else x
        repeats = 1 if name == "scorecam" else args.repeats
        with (cls(model, chunk_size=args.chunk) if name == "scorecam" else cls(model)) as method:
            ours = seconds_per_image(lambda: method(xs), len(xs), repeats, args.device)
        settings = [(args.chunk, f"grad-cam, batch {args.chunk}"), (None, "grad-cam, its default batch 16")] \
            if name == "scorecam" else [(None, "torchcam" if name == "cam" else "grad-cam")]
        for chunk, source in settings:
            run, release = reference(name, model, model.trunk.layer4, xs, chunk)
            theirs = seconds_per_image(run, len(xs), repeats, args.device)
            release()
            print(f"{name:12s} {ours * 1000:12.2f} {theirs * 1000:17.2f} {theirs / ours:8.2f}x  {source}")


if __name__ == "__main__":
    main()
