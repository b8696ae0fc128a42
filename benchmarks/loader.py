"""Training-loader throughput on an ImageNet-layout tree of real-size JPEGs, in images/s per worker: how
many CPU cores one GPU needs. Compares, in the same run, batches handed over as uint8 (casm now: the
device normalizes them) with the float32 normalization done in the workers (casm before).

    python benchmarks/loader.py                            # 600 JPEGs of 500x375 (ImageNet's typical size)
    python benchmarks/loader.py --workers 1 2 4 8 --images 2000 --root /data/imagenet   # a real tree

The generated images are photographs' worth of texture (smoothed noise, JPEG quality 90, ~110 kB),
so decoding costs what ImageNet's does. Each setting reads the tree once before timing (page cache).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2

from casm.config import DataConfig
from casm.data.datamodule import LocalizationDataModule
from casm.data.datasets import imagenet_split
from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
from casm.data.transforms import normalize_images, train_transform


def make_tree(root: Path, images: int, classes: int = 10, size: tuple[int, int] = (500, 375)) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = cv2.resize(noise, size, interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 40, image.shape, dtype=np.uint8))  # fine grain, like a photo's
        cv2.imwrite(str(folder / f"img{i:06d}.JPEG"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def images_per_second(root: Path, workers: int, batch: int, float_in_workers: bool, device: str) -> float:
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "imagenet", "root": str(root), "image_size": 224,
                                                              "batch_size": batch, "num_workers": workers})
    dm = LocalizationDataModule(data)  # its loader settings; the dataset is set here (no validation boxes needed)
    transform = train_transform(data)
    if float_in_workers:  # before: float32 normalization in the worker processes
        transform = v2.Compose([*transform.transforms, v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dm.train_set = imagenet_split(root, "train", transform=transform)
    loader = dm.train_dataloader()
    for _ in loader:  # warm: workers started, files in the page cache
        pass
    start, count = time.perf_counter(), 0
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        x = x if float_in_workers else normalize_images(x)
        count += len(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--root", help="an existing ImageNet-layout folder (ROOT/train/<synset>/*.JPEG)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collects batches, as beside a GPU
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not args.root:
            make_tree(root, args.images)
        sizes = [p.stat().st_size for p in (root / "train").rglob("*.JPEG")]
        print(f"{len(sizes)} JPEGs, mean {np.mean(sizes) / 1e3:.0f} kB; RandomResizedCrop(224) + flip; "
              f"batch {args.batch}; {torch.get_num_threads()} thread in the main process; device {args.device}")
        print(f"{'workers':>8s}{'uint8 (now) img/s':>20s}{'per worker':>12s}{'float32 (before)':>18s}{'ratio':>8s}")
        for workers in args.workers:
            now = images_per_second(root, workers, args.batch, False, args.device)
            before = images_per_second(root, workers, args.batch, True, args.device)
            print(f"{workers:>8d}{now:>20.0f}{now / workers:>12.0f}{before:>18.0f}{now / before:>7.2f}x")


if __name__ == "__main__":
    main()
