"""Datasets that yield ``{"image", "label", "boxes"}`` samples: the built-in synthetic set, any
ImageFolder tree with a box file, and ImageNet (ILSVRC2012) with its official boxes.

Boxes are ``[x0, y0, x1, y1]`` pixels with exclusive ends, in the coordinates of the *transformed*
image: torchvision's ``transforms.v2`` moves them with every resize, crop and flip.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from casm.data import synthetic
from casm.data.images import IMAGE_EXTENSIONS, CorruptImageError, load_rgb  # noqa: F401 (re-exported)
from casm.errors import UserError

log = logging.getLogger(__name__)



def select_classes(all_classes: Sequence[str], include: Sequence[str] | None = None,
                   exclude: Sequence[str] | None = None) -> list[str]:
    """The classes kept, in their original order. Unknown names are an error, not silently ignored."""
    known = set(all_classes)
    for option, names in (("include_classes", include), ("exclude_classes", exclude)):
        unknown = [n for n in names or [] if n not in known]
        if unknown:
            raise UserError(f"data.{option}: unknown classes {unknown[:5]}; known: {list(all_classes)[:10]}...")
    kept = [c for c in all_classes if (include is None or c in include) and c not in (exclude or [])]
    if not kept:
        raise UserError("data.include_classes/exclude_classes leave no class to train on")
    return kept


def _box_tensor(boxes: Sequence[Sequence[float]], height: int, width: int) -> tv_tensors.BoundingBoxes:
    data = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    return tv_tensors.BoundingBoxes(data, format="XYXY", canvas_size=(height, width))


class SyntheticShapes(Dataset):
    """The built-in offline dataset (see :mod:`casm.data.synthetic`), rendered once into memory.

    ``num_samples`` images are drawn over *all* ``num_classes`` classes of the generator; a class
    selection keeps the images of the kept classes (the same images whatever else is kept, as when
    filtering a folder dataset), so 20 % of the classes means about 20 % of the images. Class names
    are the generator's; ``include``/``exclude`` also accept class ids as strings. Labels are
    re-indexed 0..k-1 over the kept classes; ``samples_per_class`` keeps the first N of each.
    """

    def __init__(self, split: str, num_samples: int, image_size: int = 64, seed: int = 0,
                 include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                 transform: Callable | None = None, num_classes: int = 10,
                 samples_per_class: int | None = None) -> None:
        names = list(synthetic.class_names(num_classes))
        by_id = {str(i): n for i, n in enumerate(names)}
        include = [by_id.get(str(c), c) for c in include] if include is not None else None
        exclude = [by_id.get(str(c), c) for c in exclude] if exclude is not None else None
        self.classes = select_classes(names, include, exclude)
        label_of = {names.index(c): label for label, c in enumerate(self.classes)}  # generator id -> label
        self.transform = transform
        self.object_masks = split != "train"  # each object's pixels, for PxAP (evaluation only)
        self.samples = []
        taken = [0] * len(self.classes)
        for index in range(num_samples):
            rng = synthetic.sample_rng(seed, split, index)
            class_id = int(rng.integers(num_classes))
            label = label_of.get(class_id)
            if label is None or (samples_per_class is not None and taken[label] >= samples_per_class):
                continue
            taken[label] += 1
            self.samples.append((synthetic.render_sample(class_id, rng, image_size, num_classes), label))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> dict:
        sample, label = self.samples[index]
        image = tv_tensors.Image(torch.from_numpy(sample.image).permute(2, 0, 1))
        boxes = _box_tensor([sample.box], *sample.image.shape[:2])
        targets = (boxes, tv_tensors.Mask(torch.from_numpy(sample.mask))) if self.object_masks else (boxes,)
        if self.transform is not None:
            image, *targets = self.transform(image, *targets)  # the mask follows the geometry
        item = {"image": image, "label": label, "boxes": targets[0].as_subclass(torch.Tensor), "index": index}
        if self.object_masks:
            item["object_mask"] = targets[1].as_subclass(torch.Tensor).bool()
        return item


class ShuffledLabels(Dataset):
    """The data-randomization test (Adebayo et al. 2018): every image keeps its pixels and boxes and gets
    the label of another image, a fixed random permutation (class frequencies are kept). A saliency
    method trained or run on a model fitted to these labels must not localize the objects."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.classes = dataset, dataset.classes
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        original = dataset.labels
        self.labels = [original[i] for i in order]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        item = self.dataset[index]
        return None if item is None else dict(item, label=self.labels[index])


class BoxedImageDataset(Dataset):
    """Records of ``(path, label, boxes)`` read from disk, with optional skipping of bad files."""

    def __init__(self, records: list[tuple[Path, int, list[list[float]]]], classes: list[str],
                 transform: Callable | None = None, skip_corrupt: bool = False) -> None:
        self.records, self.classes = records, classes
        self.transform, self.skip_corrupt = transform, skip_corrupt

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [label for _, label, _ in self.records]

    def __getitem__(self, index: int) -> dict | None:
        path, label, boxes = self.records[index]
        try:
            pil = load_rgb(path)
        except CorruptImageError as err:
            if self.skip_corrupt:
                log.warning("skipped: %s", err)
                return None  # dropped and counted by the collate function
            raise type(err)(f"{err} (data.skip_corrupt=true skips unreadable images and counts them)") from err
        image = tv_tensors.Image(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
        for box in boxes:  # the box file cannot know image sizes: checked here, against the image
            if box[2] > pil.width + 0.5 or box[3] > pil.height + 0.5:
                raise UserError(f"box {box} of {path} reaches outside the {pil.width}x{pil.height} image")
        box_tensor = _box_tensor(boxes, pil.height, pil.width)
        if self.transform is not None:
            image, box_tensor = self.transform(image, box_tensor)
        return {"image": image, "label": label, "boxes": box_tensor.as_subclass(torch.Tensor), "index": index}


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} (set data.root to the dataset folder)")
    return path


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir())


def _images_in(folder: Path) -> list[Path]:
    """Every image below ``folder``, symbolic links to folders followed."""
    found = [Path(d) / f for d, _, files in os.walk(folder, followlinks=True) for f in files]
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_records(split_dir: Path, classes: list[str], boxes: dict | None = None) -> list:
    """(path, label, boxes) for every image of every class; a class folder without images is an error
    (it would be a class with no example)."""
    records = []
    for label, c in enumerate(classes):
        images = _images_in(split_dir / c)
        if not images:
            raise UserError(f"{split_dir / c} holds no images ({', '.join(IMAGE_EXTENSIONS)}); add images or "
                            f"remove the folder (or leave the class out with data.exclude_classes)")
        records += [(p, label, (boxes or {}).get(p.relative_to(split_dir).as_posix(), [])) for p in images]
    return records


def read_box_csv(path: Path) -> dict[str, list[list[float]]]:
    """``image,x0,y0,x1,y1`` rows (a header row is optional; several rows per image for several boxes)."""
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or (line_no == 1 and row[0].strip().lower() in ("image", "path", "file")):
                continue
            try:
                name, coords = row[0].strip(), [float(v) for v in row[1:5]]
            except ValueError as err:
                raise UserError(f"{path}:{line_no}: expected image,x0,y0,x1,y1 ({err})") from err
            if len(coords) != 4:
                raise UserError(f"{path}:{line_no}: expected image,x0,y0,x1,y1, got {row}")
            x0, y0, x1, y1 = coords
            if not all(math.isfinite(v) for v in coords) or x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
                raise UserError(f"{path}:{line_no}: box {coords} of {name} is not a box: coordinates must be finite "
                                f"pixels with 0 <= x0 < x1 and 0 <= y0 < y1 (x1, y1 exclusive)")
            boxes[name].append(coords)
    return dict(boxes)


def keep_per_class(records: list[tuple[Path, int, list]], per_class: int | None, seed: int = 0) -> list:
    """At most ``per_class`` records of each label, drawn at random (seeded), in their original order."""
    if per_class is None:
        return records
    order = np.random.default_rng(seed).permutation(len(records))
    kept, taken = set(), defaultdict(int)
    for i in order:
        label = records[i][1]
        if taken[label] < per_class:
            taken[label] += 1
            kept.add(int(i))
    return [r for i, r in enumerate(records) if i in kept]


@dataclass(frozen=True)
class SplitOptions:
    """What a split of images on disk is read with (the data config's part of it), the same for every layout."""

    include: list[str] | None = None  # class names to keep (None: all)
    exclude: list[str] | None = None  # class names to drop
    boxes_file: Path | None = None  # the validation boxes, where the layout's own place is not used
    transform: Callable | None = None
    skip_corrupt: bool = False  # unreadable images are skipped and counted instead of stopping the run
    samples_per_class: int | None = None  # the training split only: at most N images per class
    seed: int = 0  # which N images


def folder_split(root: Path, split: str, options: SplitOptions = SplitOptions()) -> BoxedImageDataset:
    """``ROOT/SPLIT/<class>/<image>``; boxes for the validation split from ``ROOT/val_boxes.csv``
    (or ``data.boxes_file``), keyed by the image path relative to ``ROOT/val``."""
    o = options
    root = _require_dir(Path(root), "dataset root")
    split_dir = _require_dir(root / split, f"{split} split folder")
    classes = select_classes(_class_folders(split_dir), o.include, o.exclude)
    boxes: dict[str, list[list[float]]] = {}
    boxes_file = None
    if split != "train":
        boxes_file = Path(o.boxes_file) if o.boxes_file else root / f"{split}_boxes.csv"
        if boxes_file.is_file():
            boxes = read_box_csv(boxes_file)
    records = _class_records(split_dir, classes, boxes)
    named = {p.relative_to(split_dir).as_posix() for p, _, _ in records}
    left_out = set(_class_folders(split_dir)) - set(classes)  # rows of classes not selected are fine
    unknown = [n for n in boxes if n not in named and n.split("/", 1)[0] not in left_out]
    if unknown:
        raise UserError(f"{boxes_file}: {len(unknown)} row(s) name images that are not in {split_dir} "
                        f"(e.g. {unknown[:3]}); paths are relative to {split_dir}")
    return BoxedImageDataset(keep_per_class(records, o.samples_per_class, o.seed), classes, o.transform, o.skip_corrupt)


def read_imagenet_xml(path: Path) -> tuple[str, list[list[float]]]:
    """One official ILSVRC per-image XML file -> (synset of the first object, boxes).
    Its coordinates are inclusive pixel indices, so ``x1 = xmax + 1``."""
    root = ET.parse(path).getroot()
    objects = root.findall("object")
    boxes = [[float(o.find("bndbox/xmin").text), float(o.find("bndbox/ymin").text),
              float(o.find("bndbox/xmax").text) + 1, float(o.find("bndbox/ymax").text) + 1] for o in objects]
    return (objects[0].find("name").text if objects else ""), boxes


def read_imagenet_csv(path: Path) -> dict[str, tuple[str, list[list[float]]]]:
    """``LOC_val_solution.csv``: ``ImageId,PredictionString`` with "synset x0 y0 x1 y1 ..." groups."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parts = row["PredictionString"].split()
            groups = [parts[i:i + 5] for i in range(0, len(parts), 5)]
            boxes = [[float(g[1]), float(g[2]), float(g[3]) + 1, float(g[4]) + 1] for g in groups]
            out[row["ImageId"]] = (groups[0][0] if groups else "", boxes)
    return out


def _imagenet_annotations(root: Path, boxes_file: Path | None) -> dict[str, tuple[str, list[list[float]]]]:
    """Validation image stem -> (synset, boxes) from per-image XML files or the challenge CSV."""
    # the official box archive (ILSVRC2012_bbox_val_v3.tgz) unpacks to val/*.xml: into its own folder,
    # or beside the validation images
    candidates = [Path(boxes_file)] if boxes_file else [
        root / "LOC_val_solution.csv", root / "val_xml", root / "Annotations" / "CLS-LOC" / "val", root / "bbox_val",
        root / "bbox_val" / "val", root / "ILSVRC2012_bbox_val_v3" / "val", root / "val"]
    source = next((c for c in candidates if c.is_file() or (c.is_dir() and next(c.glob("*.xml"), None))), None)
    if source is None:
        raise FileNotFoundError(
            f"no ImageNet validation boxes found (looked for {', '.join(map(str, candidates))}); "
            f"set data.boxes_file to the XML folder or LOC_val_solution.csv")
    if source.is_dir():
        return {p.stem: read_imagenet_xml(p) for p in sorted(source.glob("*.xml"))}
    return read_imagenet_csv(source)


def imagenet_split(root: Path, split: str, options: SplitOptions = SplitOptions()) -> BoxedImageDataset:
    """ILSVRC2012: ``ROOT/train/<synset>/*.JPEG``; ``ROOT/val/*.JPEG`` (flat) with boxes and labels from
    per-image XML files (``ROOT/val_xml/``, ``ROOT/Annotations/CLS-LOC/val/``, ``ROOT/bbox_val[/val]/``,
    ``ROOT/ILSVRC2012_bbox_val_v3/val/`` or beside the images in ``ROOT/val/``) or the challenge CSV
    (``ROOT/LOC_val_solution.csv``); or a ``data.boxes_file`` naming either."""
    o = options
    root = _require_dir(Path(root), "ImageNet root")
    train_dir = root / "train"
    if split == "train":
        classes = select_classes(_class_folders(_require_dir(train_dir, "ImageNet train folder")), o.include, o.exclude)
        records = _class_records(train_dir, classes)
        return BoxedImageDataset(keep_per_class(records, o.samples_per_class, o.seed), classes, o.transform,
                                 o.skip_corrupt)

    val_dir = _require_dir(root / split, "ImageNet val folder")
    annotations = _imagenet_annotations(root, o.boxes_file)
    classes = select_classes(_imagenet_synsets(root, annotations), o.include, o.exclude)
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for path in _images_in(val_dir):
        synset, boxes = annotations.get(path.stem, ("", []))
        if synset in index:
            records.append((path, index[synset], boxes))
    return BoxedImageDataset(records, classes, o.transform, o.skip_corrupt)


def _imagenet_synsets(root: Path, annotations: dict | None = None, boxes_file: Path | None = None) -> list[str]:
    """The synsets: ROOT/train's folders, or those the validation annotations name when there is none."""
    if (root / "train").is_dir():
        return _class_folders(root / "train")
    annotations = annotations if annotations is not None else _imagenet_annotations(root, boxes_file)
    return sorted({synset for synset, _ in annotations.values()} - {""})


def dataset_classes(data) -> list[str]:
    """Every class of the configured dataset (a ``data`` config), before any selection: what a split
    file is made from and checked against. Lists class folders only, never the images."""
    if data.name == "synthetic":
        return list(synthetic.class_names(data.synthetic_classes))
    root = _require_dir(Path(data.root), f"{data.name} dataset root")
    if data.name == "imagenet":
        return _imagenet_synsets(root, boxes_file=data.boxes_file)
    return _class_folders(root / "train" if (root / "train").is_dir() else
                          _require_dir(root / "val", "folder dataset's train or val folder"))
