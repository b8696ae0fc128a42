"""Images per second for single-pass saliency vs. post-hoc CAMs, same model size and batch, one run.

Rows: the exported masker (ResNet-50 encoder + decoder, standalone), a plain ResNet-50 forward (the
floor for any single-pass method), Grad-CAM and Score-CAM from casm and from the grad-cam package.
Weights are random: speed does not depend on them, and nothing is downloaded.

    python benchmarks/explain_throughput.py                          # CPU, ResNet-50, 224 px
    python benchmarks/explain_throughput.py --device cuda --amp --channels-last --batch 64
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from timing import seconds_per_call

from casm.baselines import GradCAM, LogitsOnly, ScoreCAM
from casm.export.standalone import MaskerManifest, StandaloneMasker, build_masker
from casm.models import ResNetClassifier


def images_per_second(fn: Callable[[], object], images: int, device: str, repeats: int, warmup: int = 3) -> float:
    return images / seconds_per_call(fn, repeats, device, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--head", default="casme", help="casme (the default head) or deconv, lfi, abn")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scorecam-images", type=int, default=1, help="Score-CAM is slow: images it explains")
    parser.add_argument("--scorecam-chunk", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for every row")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--skip-reference", action="store_true", help="skip the grad-cam package rows")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = args.device
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    classifier = ResNetClassifier(args.arch, 1000).eval().to(dev, memory_format=fmt)
    manifest = MaskerManifest(arch=args.arch, width=64, head=args.head, hidden=64, image_size=args.size,
                              resize=args.size)
    masker = StandaloneMasker(manifest, build_masker(manifest, "benchmark")).eval().to(dev, memory_format=fmt)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev).contiguous(memory_format=fmt)
    x_score = x[: args.scorecam_images]
    autocast = lambda: torch.autocast(dev, dtype=torch.bfloat16, enabled=args.amp)  # noqa: E731

    def run(fn):
        def wrapped():
            with autocast():
                return fn()
        return wrapped

    rows: dict[str, float] = {}
    with torch.inference_mode():
        rows["casm masker (exported)"] = images_per_second(run(lambda: masker(x)), args.batch, dev, args.repeats)
        rows["plain classifier forward"] = images_per_second(run(lambda: classifier(x)), args.batch, dev,
                                                             args.repeats)
    with GradCAM(classifier) as gradcam:
        rows["Grad-CAM (casm)"] = images_per_second(run(lambda: gradcam(x)), args.batch, dev, args.repeats)
    with ScoreCAM(classifier, chunk_size=args.scorecam_chunk) as scorecam:
        rows["Score-CAM (casm)"] = images_per_second(run(lambda: scorecam(x_score)), len(x_score), dev, 1, warmup=0)
    if not args.skip_reference:
        import pytorch_grad_cam as pgc

        wrapped = LogitsOnly(classifier)
        with pgc.GradCAM(model=wrapped, target_layers=[classifier.trunk.layer4]) as ref:
            call = run(lambda: ref(input_tensor=x, targets=None))
            rows["Grad-CAM (grad-cam package)"] = images_per_second(call, args.batch, dev, args.repeats)
        with pgc.ScoreCAM(model=wrapped, target_layers=[classifier.trunk.layer4]) as ref:
            ref.batch_size = args.scorecam_chunk
            call = run(lambda: ref(input_tensor=x_score, targets=None))
            rows["Score-CAM (grad-cam package)"] = images_per_second(call, len(x_score), dev, 1, warmup=0)
    masker_ips = rows["casm masker (exported)"]
    print(f"{args.arch} {args.size}px batch {args.batch} on {dev}"
          f"{' bf16' if args.amp else ''}{' channels_last' if args.channels_last else ''}")
    print(f"{'method':32s} {'images/s':>10s} {'masker is x faster':>20s}")
    for name, ips in rows.items():
        print(f"{name:32s} {ips:10.2f} {masker_ips / ips:20.2f}")
    plain = rows["plain classifier forward"]
    print(f"\ntargets: masker >= 0.7x plain forward: {masker_ips / plain:.2f}x; "
          f">= 2x Grad-CAM: {masker_ips / rows['Grad-CAM (casm)']:.1f}x; "
          f">= 500x Score-CAM: {masker_ips / rows['Score-CAM (casm)']:.0f}x")


if __name__ == "__main__":
    main()
