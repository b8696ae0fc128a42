"""The Lightning DataModule: datasets, transforms, sampling and batching for every data source."""

from __future__ import annotations

from typing import Iterator

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from casm.data.datasets import ShuffledLabels, SyntheticShapes, folder_split, imagenet_split
from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
from casm.data.splits import class_selection
from casm.errors import UserError
from casm.training.batching import per_device_batch


def as_uint8() -> list:
    """The last transform: images stay 8-bit until they reach the device (4x less to copy and pin than
    float32, and no float work in the loader workers); :func:`normalize_images` finishes them there."""
    return [v2.ToDtype(torch.uint8, scale=True)]


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 normalized with the ImageNet mean and std, on the images' device."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch from casm's loaders, got {images.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    # the operations of torchvision's ToDtype(float32, scale=True) + Normalize, in their order: the same
    # bits as normalizing in the workers, so a run is the run it was before batches travelled as uint8
    return images.float().mul_(1.0 / 255).sub_(mean).div_(std)


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
    return v2.Compose([*steps, *as_uint8()])


def eval_transform(data: DictConfig) -> v2.Compose:
    return v2.Compose([*eval_geometry(data), *as_uint8()])


def collate_with_boxes(samples: list[dict | None]) -> dict:
    """Stack images and labels; pad boxes to (B, N, 4) with a (B, N) validity mask.

    ``None`` samples (unreadable files with ``data.skip_corrupt``) are dropped and counted in
    ``batch["skipped"]``. Degenerate boxes (cropped away entirely) are marked invalid.
    """
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return {"image": torch.empty(0, 3, 0, 0, dtype=torch.uint8), "label": torch.empty(0, dtype=torch.long),
                "index": torch.empty(0, dtype=torch.long), "boxes": torch.empty(0, 0, 4),
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
        "index": torch.tensor([s["index"] for s in kept]),  # positions in the dataset (evaluation shards by them)
        "boxes": boxes,
        "box_valid": valid,
        "skipped": skipped,
    }


class EpochShuffleSampler(Sampler[int]):
    """This process's share of a random order that depends only on (seed, epoch).

    Under DDP, rank r of W takes positions r, r+W, r+2W, ... of the one order, so step k's images over
    all ranks are positions kB..(k+1)B-1 (B the global batch): *the same global batches as one process*,
    whatever the number of GPUs, and a resumed run sees the batches an uninterrupted one would. casm
    splits the order itself (the trainer runs with ``use_distributed_sampler=False``; Lightning calls
    ``set_epoch`` on a DataLoader's own sampler every epoch, on every 2.x version): Lightning's
    ``DistributedSamplerWrapper`` would re-permute it with its own seed, and before Lightning 2.6.1
    (Lightning-AI/pytorch-lightning#21456) did not forward ``set_epoch`` to the sampler it wraps."""

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1,
                 epoch_length: int | None = None) -> None:
        self.length, self.seed, self.epoch = length, seed, 0
        self.epoch_length = epoch_length or length  # positions per epoch: more than length cycles the split
        self.rank, self.world_size = rank, world_size
        self.resume_at: tuple[int, int] | None = None  # (epoch, positions already consumed) after a mid-epoch resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_length // self.world_size  # every rank the same count (the tail is dropped, as drop_last)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        passes = -(-self.epoch_length // self.length)  # whole shuffled passes, each image once per pass
        order = torch.cat([torch.randperm(self.length, generator=g) for _ in range(passes)])
        order = order[: len(self) * self.world_size].tolist()
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            order = order[self.resume_at[1]:]  # the resumed epoch goes on where the checkpoint left it
            self.resume_at = None
        return iter(order[self.rank:: self.world_size])


class ShardSampler(Sampler[int]):
    """Evaluation under DDP: rank r of W reads images r, r+W, ... once each (no padding, unlike
    ``DistributedSampler``, so the metrics, summed over ranks, count every image exactly once)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class LocalizationDataModule(pl.LightningDataModule):
    """Train split (labels) and validation split (labels + boxes) for ``data.name``.

    ``splits=("val",)`` builds the validation split alone (evaluation: no training images are listed
    or rendered; the class names come from the class folders)."""

    def __init__(self, data: DictConfig, seed: int = 0, splits: tuple[str, ...] = ("train", "val"),
                 shard: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.cfg, self.seed, self.splits = data, seed, splits
        self.shard = shard  # (rank, world size) outside a Trainer, e.g. evaluation under torchrun
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
            raise UserError(f"{c.root}: train and val have different classes "
                            f"({len(self.train_set.classes)} vs {len(self.val_set.classes)})")

    def setup(self, stage: str | None = None) -> None:
        self._build()
        if self.cfg.shuffle_labels and self.train_set is not None and not isinstance(self.train_set, ShuffledLabels):
            self.train_set = ShuffledLabels(self.train_set, self.cfg.seed)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        return dict(batch, image=normalize_images(batch["image"]))  # on the device (see as_uint8)

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else (self.shard or (0, 1))[1]

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else (self.shard or (0, 1))[0]

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
            drop_last=isinstance(sampler, EpochShuffleSampler),
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.cfg.batch_size and not self.cfg.epoch_images:  # drop_last: no batch at all
            raise UserError(f"the training split has {len(self.train_set)} images, fewer than data.batch_size="
                            f"{self.cfg.batch_size}: lower data.batch_size, keep more classes / images, or set "
                            f"data.epoch_images")
        sampler = EpochShuffleSampler(len(self.train_set), self.seed, self.rank, self.world_size,
                                      epoch_length=self.cfg.epoch_images)
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None:
            # Lightning makes a resumed run's first iterator before any epoch hook runs (and worker processes
            # draw indices as soon as it exists): the sampler must start at the restored epoch, and skip
            # what a mid-epoch checkpoint's run already trained on (else Lightning restarts the epoch at
            # batch 0 and those batches train twice): global batches x data.batch_size positions.
            sampler.set_epoch(self.trainer.current_epoch)
            sampler.resume_at = getattr(module, "resume_position", None)
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        shard = ShardSampler(len(self.val_set), self.rank, self.world_size) if self.world_size > 1 else None
        return self._loader(self.val_set, shard)
