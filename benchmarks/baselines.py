"""Time every baseline against its reference implementation on the same model and batch, in the same run:
the grad-cam package for the CAM family, torchcam for CAM (which grad-cam lacks); RISE and Integrated
Gradients (Captum itself) have no second implementation and are timed alone. Prints ms per image and
the speed-up (reference time / casm time).

    python benchmarks/baselines.py                                   # ResNet-18, 64 px (the default run's model)
    python benchmarks/baselines.py --arch resnet50 --size 224 --batch 4 --slow-images 1
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # the grad-cam package's per-batch progress bars (before its import)

import torch  # noqa: E402
from timing import seconds_per_call
from torch import nn

from casm.baselines import BASELINES, PERTURBATION_METHODS, LogitsOnly
from casm.models import ResNetClassifier

GRAD_CAM_PACKAGE = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "scorecam": "ScoreCAM",
                    "xgradcam": "XGradCAM", "hirescam": "HiResCAM", "layercam": "LayerCAM",
                    "ablationcam": "AblationCAM", "shapleycam": "ShapleyCAM", "eigencam": "EigenCAM"}


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
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST

    method = getattr(pgc, GRAD_CAM_PACKAGE[name])(model=wrapped, target_layers=[layer])
    if chunk is not None:  # None: the package's own default (16 / 32 images per forward for Score-/Ablation-CAM)
        method.batch_size = chunk
    if name == "shapleycam":  # its paper's score, as casm's ShapleyCAM uses
        def run():
            targets = [ClassifierOutputReST(int(c)) for c in wrapped(x).argmax(1)]
            return method(input_tensor=x, targets=targets)
        return run, method.activations_and_grads.release
    return (lambda: method(input_tensor=x, targets=None)), method.activations_and_grads.release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slow-images", type=int, default=4, help="images for Score-CAM, Ablation-CAM and RISE")
    parser.add_argument("--chunk", type=int, default=256, help="forward batch of the perturbation methods, both sides")
    parser.add_argument("--rise-masks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(BASELINES), help="comma-separated names")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResNetClassifier(args.arch, 10).eval().to(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    print(f"{args.arch} {args.size}px on {args.device}; batch {args.batch} "
          f"({', '.join(PERTURBATION_METHODS)}: {args.slow_images} images)")
    print(f"{'method':22s} {'casm ms/img':>12s} {'reference ms/img':>17s} {'speed-up':>9s}  reference")
    for name in args.methods.split(","):
        cls = BASELINES[name]
        slow = name in PERTURBATION_METHODS
        xs = x[: args.slow_images] if slow else x
        repeats = 1 if slow else args.repeats
        kwargs = {"chunk_size": args.chunk} if slow else {}
        if name == "rise":
            kwargs["num_masks"] = args.rise_masks
        with cls(model, **kwargs) as method:
            ours = seconds_per_image(lambda: method(xs), len(xs), repeats, args.device)
        if name not in GRAD_CAM_PACKAGE and name != "cam":
            print(f"{name:22s} {ours * 1000:12.2f} {'—':>17s} {'—':>9s}  none (Captum itself)"
                  if name == "integrated_gradients" else f"{name:22s} {ours * 1000:12.2f} {'—':>17s} {'—':>9s}  none")
            continue
        settings = [(args.chunk, f"grad-cam, batch {args.chunk}"), (None, "grad-cam, its default batch")] \
            if slow else [(None, "torchcam" if name == "cam" else "grad-cam")]
        for chunk, source in settings:
            run, release = reference(name, model, model.trunk.layer4, xs, chunk)
            theirs = seconds_per_image(run, len(xs), repeats, args.device)
            release()
            print(f"{name:22s} {ours * 1000:12.2f} {theirs * 1000:17.2f} {theirs / ours:8.2f}x  {source}")


if __name__ == "__main__":
    main()
