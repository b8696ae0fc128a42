"""Saliency for new images with an exported masker: one forward pass per batch.

Images of any size and mode (greyscale, RGBA, palette) are converted to RGB, resized whole to the
masker's square input (no crop, so every pixel gets a value), normalized as the manifest says, and
the masks are resized back to each image's own size. The box is the tight box of the largest
4-connected component of the binarized mask (docs/evaluation.md, quantile rule).
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from casm.checkpoints import write_bytes_atomically
from casm.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    CorruptImageError,
    ImageTooLargeError,
    encode_png,
    load_rgb,
    rgb_image,
    three_channels,
    to_uint8,
)
from casm.errors import UserError
from casm.export.standalone import StandaloneMasker
from casm.metrics.localization import predicted_boxes

ImageInput = Union[str, Path, Image.Image, np.ndarray]
T = TypeVar("T")
PIXEL_BUDGET = 32 * 1024 * 1024  # pixels of full-size images held per batch (~100 MB as RGB)


@dataclass
class Explanation:
    mask: np.ndarray  # (H, W) float32 in [0, 1], at the image's own resolution
    box: list[float]  # [x0, y0, x1, y1] in the image's pixels, exclusive ends
    prediction: dict | None = None  # with a classifier (load_explainer): {"class", "index", "probability"}

    def as_json(self, image: str, width: int, height: int) -> dict:
        return {"image": image, "box_xyxy": self.box, "width": width, "height": height,
                **({"predicted": self.prediction} if self.prediction is not None else {})}


def predictions(logits: torch.Tensor, classes: Sequence[str]) -> list[dict]:
    """Top-1 class (its name where the export has class names), index and softmax probability per image."""
    probability, index = logits.float().softmax(dim=1).max(dim=1)
    return [{"class": classes[i] if i < len(classes) else str(i), "index": i, "probability": round(p, 6)}
            for i, p in zip(index.tolist(), probability.tolist())]


def to_rgb_array(image: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path, PIL image or array (H, W), (H, W, 3) or (H, W, 4) of any depth -> (H, W, 3) uint8 RGB
    (16-bit and float scaled as :mod:`casm.data.images` says)."""
    if isinstance(image, (str, Path)):
        return np.asarray(load_rgb(Path(image), max_pixels))
    if isinstance(image, Image.Image):
        return np.asarray(rgb_image(image, "the PIL image"))
    array = np.asarray(image)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return three_channels(to_uint8(array, "the image array"))
    raise UserError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def preprocess(images: Sequence[np.ndarray], masker: StandaloneMasker) -> torch.Tensor:
    """RGB uint8 arrays -> a normalized (B, 3, S, S) batch at the masker's input size."""
    m = masker.manifest
    size = (m.image_size, m.image_size)
    resized = [cv2.resize(img, size, interpolation=cv2.INTER_AREA) for img in images]
    batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(m.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.std).view(1, 3, 1, 1)
    return (batch - mean) / std


def batches(items: Iterable[T], sizes: Callable[[T], int], batch_size: int,
            pixel_budget: int = PIXEL_BUDGET) -> Iterator[list[T]]:
    """Consecutive groups of at most ``batch_size`` items whose pixels add up to at most ``pixel_budget``
    (a group always takes one item), so a folder of 24 MP photos is held one or two at a time, not 32."""
    group: list[T] = []
    pixels = 0
    for item in items:
        n = sizes(item)
        if group and (len(group) == batch_size or pixels + n > pixel_budget):
            yield group
            group, pixels = [], 0
        group.append(item)
        pixels += n
    if group:
        yield group


@torch.inference_mode()
def explain_arrays(masker: StandaloneMasker, arrays: Sequence[np.ndarray], amp: bool = False) -> list[Explanation]:
    """One forward pass for RGB uint8 ``arrays``; masks and boxes at each array's own size, and the predicted
    class when the masker was loaded with its classifier."""
    device = next(masker.parameters()).device
    batch = preprocess(arrays, masker).to(device)
    predicted: list[dict | None] = [None] * len(arrays)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        if masker.classifier is not None:
            logits, masks = masker.logits_and_masks(batch)
            predicted = predictions(logits, masker.manifest.classes)
        else:
            masks = masker(batch)
    masks = masks.float()  # (B, 1, S, S)
    results = []
    for array, mask, prediction in zip(arrays, masks, predicted):
        full = F.interpolate(mask[None], size=array.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        box = predicted_boxes(full[None])[0].tolist()
        results.append(Explanation(full.clamp_(0, 1).cpu().numpy(), box, prediction))
    return results


def iter_explanations(masker: StandaloneMasker, images: Iterable[ImageInput], batch_size: int = 32,
                      amp: bool = False) -> Iterator[tuple[np.ndarray, Explanation]]:
    """(RGB array, explanation) per image, read and explained a batch at a time (see :func:`batches`)."""
    arrays = (to_rgb_array(img) for img in images)
    for group in batches(arrays, lambda a: a.shape[0] * a.shape[1], batch_size):
        yield from zip(group, explain_arrays(masker, group, amp))


def explain(masker: StandaloneMasker, images: Iterable[ImageInput], batch_size: int = 32,
            amp: bool = False) -> list[Explanation]:
    """Masks and boxes for ``images`` (paths, PIL images or arrays), in their own sizes."""
    return [result for _, result in iter_explanations(masker, images, batch_size, amp)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A JET heat map of ``mask`` blended over the RGB image (OpenCV colour map; uint8 throughout, so a
    24 MP photo needs no float copies)."""
    heat = cv2.applyColorMap(np.round(mask * 255).astype(np.uint8), cv2.COLORMAP_JET)
    cv2.cvtColor(heat, cv2.COLOR_BGR2RGB, dst=heat)
    return cv2.addWeighted(image, 1 - alpha, heat, alpha, 0)


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to the images inside them (sorted, recursive); a file named twice
    (directly, or also through its folder) once."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(p)
    first: dict[Path, Path] = {}  # the same file by any path, in the order first named
    for p in out:
        first.setdefault(p.resolve(), p)
    return list(first.values())


def output_stems(files: Sequence[Path]) -> list[str]:
    """Output name per input: its stem, or where two inputs share a stem (``a/same.png``, ``b/same.png``,
    ``same.jpg``) its path below their common folder with ``__`` for ``/``; a name still taken gets ``-2``,
    ``-3``, ..., so no output overwrites another."""
    counts = Counter(p.stem for p in files)
    resolved = [p.resolve() for p in files]
    common = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    wanted = [p.stem if counts[p.stem] == 1 else "__".join(r.relative_to(common).parts)
              for p, r in zip(files, resolved)]
    # a file may itself be named like a joined path (``a__same.png.png`` beside ``a/same.png``): number repeats
    taken: set[str] = set()
    stems = []
    for stem in wanted:
        unique, n = stem, 1
        while unique in taken:
            n += 1
            unique = f"{stem}-{n}"
        taken.add(unique)
        stems.append(unique)
    return stems


def _write(path: Path, data: bytes | str) -> None:
    """Each output file appears complete or not at all (a full disk: one error line, no half-written file)."""
    write_bytes_atomically(path, data.encode() if isinstance(data, str) else data, "explanation",
                           elsewhere="give --out a folder on another disk")


def write_explanations(masker: StandaloneMasker, paths: Sequence[str | Path], out_dir: str | Path,
                       mask_format: str = "png", batch_size: int = 32, amp: bool = False,
                       progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, list[str]]:
    """For each image: ``NAME_mask.png`` (8-bit; ``png16``: 16-bit; ``npy``: float32),
    ``NAME_overlay.png`` and ``NAME_box.json`` (with the predicted class when the masker has its
    classifier). Unreadable or too large images are reported and
    skipped; the others are still written. Returns (images written, error messages)."""
    out = Path(out_dir)
    files = expand_inputs(paths)
    if not files:
        raise UserError(f"no images in {', '.join(map(str, paths))} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    out.mkdir(parents=True, exist_ok=True)
    stems = dict(zip(files, output_stems(files)))
    errors: list[str] = []
    written = 0
    bar = tqdm(total=len(files), unit="img", disable=not progress)

    def readable() -> Iterator[tuple[Path, np.ndarray]]:
        for path in files:
            try:
                yield path, to_rgb_array(path, max_pixels)
            except (CorruptImageError, OSError, ValueError) as err:
                hint = " (--max-megapixels raises the limit)" if isinstance(err, ImageTooLargeError) else ""
                errors.append(f"skipped {path}: {err}{hint}")
                bar.update(1)

    for group in batches(readable(), lambda item: item[1].shape[0] * item[1].shape[1], batch_size):
        for (path, array), result in zip(group, explain_arrays(masker, [a for _, a in group], amp)):
            stem = stems[path]
            if mask_format == "npy":
                mask = io.BytesIO()
                np.save(mask, result.mask.astype(np.float32))
                _write(out / f"{stem}_mask.npy", mask.getvalue())
            else:
                depth = np.uint16 if mask_format == "png16" else np.uint8
                _write(out / f"{stem}_mask.png", encode_png(np.round(result.mask * np.iinfo(depth).max).astype(depth)))
            blended = cv2.cvtColor(overlay(array, result.mask), cv2.COLOR_RGB2BGR)
            _write(out / f"{stem}_overlay.png", encode_png(blended))
            _write(out / f"{stem}_box.json", json.dumps(result.as_json(str(path), array.shape[1], array.shape[0])))
            written += 1
            bar.update(1)
    bar.close()
    return written, errors
