"""The Lightning DataModule: datasets, transforms, sampling and batching for every data source."""

from __future__ import annotations

from typing import Iterator

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from casm.data.datasets import SyntheticShapes, folder_split, imagenet_split
from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
from casm.data.splits import class_selection
from casm.training.batching import per_device_batch


def normalize() -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Normalized (B, 3, H, W) -> [0, 1], for pictures."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def photo_defaults(data: DictConfig) -> bool:
    """Folder and ImageNet data get the paper's photo augmentation unless told otherwise; the built-in
    data is generated at its final size and never flipped (a flip would turn a left part into a right one)."""
    return data.name != "synthetic"


def eval_geometry(data: DictConfig) -> list:
    """Resize + centre crop (boxes follow); none for the built-in data, generated at its final size.
    Default resize: 256/224 x size for ImageNet (the paper), the input size itself for folders, so a
    square image already at that size loses no pixel."""
    size = data.image_size
    if data.name == "synthetic":
        return []
    if not data.center_crop:
        return [v2.Resize((size, size), antialias=True)]
    resize = data.resize or (round(size * 256 / 224) if data.name == "imagenet" else size)
    return [v2.Resize(resize, antialias=True), v2.CenterCrop(size)]


def random_augmentation(data: DictConfig) -> tuple[bool, bool]:
    """(random crop, horizontal flip) in training: both by default for photos (the paper's), neither for
    the built-in data; ``data.random_crop`` / ``data.flip`` decide when set."""
    crop = photo_defaults(data) if data.random_crop is None else data.random_crop
    flip = photo_defaults(data) if data.flip is None else data.flip
    return crop, flip


def train_transform(data: DictConfig) -> v2.Compose:
    """The training augmentation ``data`` asks for: RandomResizedCrop(``crop_scale``) and horizontal
    flips (see :func:`random_augmentation`); the evaluation geometry when ``random_crop`` is off."""
    crop, flip = random_augmentation(data)
    steps = [v2.RandomResizedCrop(data.image_size, scale=tuple(data.crop_scale), antialias=True)] if crop else \
        eval_geometry(data)
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, *normalize()])


def eval_transform(data: DictConfig) -> v2.Compose:
    return v2.Compose([*eval_geometry(data), *normalize()])


def collate_with_boxes(samples: list[dict | None]) -> dict:
    """Stack images and labels; pad boxes to (B, N, 4) with a (B, N) validity mask.

    ``None`` samples (unreadable files with ``data.skip_corrupt``) are dropped and counted in
    ``batch["skipped"]``. Degenerate boxes (cropped away entirely) are marked invalid.
    """
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return {"image": torch.empty(0), "label": torch.empty(0, dtype=torch.long), "boxes": torch.empty(0, 0, 4),
                "box_valid": torch.empty(0, 0, dtype=torch.bool), "skipped": skipped}
    n = max(1, max(len(s["boxes"]) for s in kept))
    boxes = torch.zeros(len(kept), n, 4)
    valid = torch.zeros(len(kept), n, dtype=torch.bool)
    for i, s in enumerate(kept):
        b = s["boxes"].reshape(-1, 4).float()
        boxes[i, : len(b)] = b
        valid[i, : len(b)] = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return {
        "image": torch.stack([s["image"].as_subclass(torch.Tensor) for s in kept]),
        "label": torch.tensor([s["label"] for s in kept]),
        "boxes": boxes,
        "box_valid": valid,
        "skipped": skipped,
    }


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on (seed, epoch): a resumed run sees the same batches as an
    uninterrupted one. Lightning calls ``set_epoch`` each epoch (and wraps it for DDP)."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, indices already consumed) after a mid-epoch resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            order = order[self.resume_at[1]:]  # the resumed epoch goes on where the checkpoint left it
            self.resume_at = None
        return iter(order)


class LocalizationDataModule(pl.LightningDataModule):
    """Train split (labels) and validation split (labels + boxes) for ``data.name``.

    ``splits=("val",)`` builds the validation split alone (evaluation: no training images are listed
    or rendered)."""

    def __init__(self, data: DictConfig, seed: int = 0, splits: tuple[str, ...] = ("train", "val")) -> None:
        super().__init__()
        self.cfg, self.seed, self.splits = data, seed, splits
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def classes(self) -> list[str]:
        """The kept classes, in label order."""
        self._build()
        return (self.train_set if self.train_set is not None else self.val_set).classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _build(self) -> None:
        if self.val_set is not None:
            return
        c = self.cfg
        include, exclude = class_selection(c)
        common = dict(include=include, exclude=exclude)
        limit = dict(samples_per_class=c.samples_per_class)  # the training split only
        train = "train" in self.splits
        if c.name == "synthetic":
            common.update(num_classes=c.synthetic_classes)
            if train:
                self.train_set = SyntheticShapes("train", c.num_train, c.image_size, c.seed,
                                                 transform=train_transform(c), **common, **limit)
            self.val_set = SyntheticShapes("val", c.num_val, c.image_size, c.seed, transform=eval_transform(c),
                                           **common)
            return
        split_fn = folder_split if c.name == "folder" else imagenet_split
        disk = dict(common, skip_corrupt=c.skip_corrupt)
        if train:
            self.train_set = split_fn(c.root, "train", transform=train_transform(c), seed=c.seed, **disk, **limit)
        self.val_set = split_fn(c.root, "val", boxes_file=c.boxes_file, transform=eval_transform(c), **disk)
        if train and self.val_set.classes != self.train_set.classes:
            raise ValueError(f"{c.root}: train and val have different classes "
                             f"({len(self.train_set.classes)} vs {len(self.val_set.classes)})")

    def setup(self, stage: str | None = None) -> None:
        self._build()

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _loader(self, dataset: Dataset, sampler: Sampler | None) -> DataLoader:
        workers = 0 if self.cfg.name == "synthetic" else self.cfg.num_workers  # in memory: workers only cost
        return DataLoader(
            dataset,
            batch_size=per_device_batch(self.cfg.batch_size, self.world_size),  # data.batch_size is the global batch
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=workers > 0,
            collate_fn=collate_with_boxes,
            drop_last=sampler is not None,
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.cfg.batch_size:  # drop_last would leave no batch: nothing would train
            raise ValueError(f"the training split has {len(self.train_set)} images, fewer than data.batch_size="
                             f"{self.cfg.batch_size}: lower data.batch_size or keep more classes / images")
        return self._loader(self.train_set, EpochShuffleSampler(len(self.train_set), self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, None)
