"""Image transforms: the training augmentation, the evaluation geometry, and normalization on the device.

Free of Lightning, so the export's manifest and inference share these rules with the data module.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torchvision.transforms import v2

from casm.data.images import IMAGENET_MEAN, IMAGENET_STD


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
    """Resize (:func:`eval_resize`) + centre crop, boxes following; none for the built-in data, generated at
    its final size."""
    size = data.image_size
    if data.name == "synthetic":
        return []
    if not data.center_crop:
        return [v2.Resize((size, size), antialias=True)]
    return [v2.Resize(eval_resize(data), antialias=True), v2.CenterCrop(size)]


def eval_resize(data: DictConfig) -> int:
    """The shorter side an evaluated image is resized to before the centre crop: ``data.resize``, else
    256/224 x size for ImageNet (the paper), the input size itself otherwise (folders: a square image
    already at that size loses no pixel; the built-in data is generated at its size)."""
    size = data.image_size
    if data.name == "synthetic" or not data.center_crop:
        return size
    return data.resize or (round(size * 256 / 224) if data.name == "imagenet" else size)


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
