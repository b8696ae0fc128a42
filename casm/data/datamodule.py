"""The Lightning DataModule: datasets, transforms, sampling and batching for every data source."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from casm.data.datasets import ShuffledLabels, SplitOptions, SyntheticShapes, folder_split, imagenet_split
from casm.data.splits import class_selection
from casm.data.transforms import eval_transform, normalize_images, train_transform
from casm.distributed import per_device_batch
from casm.errors import UserError


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
    masks = {"object_mask": torch.stack([s["object_mask"] for s in kept])} if "object_mask" in kept[0] else {}
    return {
        **masks,  # (B, H, W) bool, where the dataset has each object's pixels (PxAP)
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
        disk = SplitOptions(include=include, exclude=exclude, skip_corrupt=c.skip_corrupt, seed=c.seed)
        if train:
            self.train_set = split_fn(c.root, "train", replace(disk, transform=train_transform(c), **limit))
        self.val_set = split_fn(c.root, "val", replace(disk, boxes_file=c.boxes_file, transform=eval_transform(c)))
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

    def check_training_split(self) -> None:
        """Refuse a training split smaller than one batch (drop_last: not a single step), before a run starts."""
        self._build()
        if len(self.train_set) < self.cfg.batch_size and not self.cfg.epoch_images:
            raise UserError(f"the training split has {len(self.train_set)} images, fewer than data.batch_size="
                            f"{self.cfg.batch_size}: lower data.batch_size, keep more classes / images, or set "
                            f"data.epoch_images")

    def train_dataloader(self) -> DataLoader:
        self.check_training_split()
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
