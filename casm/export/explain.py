"""Saliency for new images with an exported masker: one forward pass per batch.

Images of any size and mode (greyscale, RGBA, palette) are converted to RGB, resized whole to the
masker's square input (no crop, so every pixel gets a value), normalized as the manifest says, and
the masks are resized back to each image's own size. The box is the tight box of the largest
4-connected component of the binarized mask (SPEC 4.1, quantile rule).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from casm.data.datasets import IMAGE_EXTENSIONS, CorruptImageError, load_rgb
from casm.export.standalone import StandaloneMasker
from casm.metrics.localization import predicted_boxes

ImageInput = Union[str, Path, Image.Image, np.ndarray]


@dataclass
class Explanation:
    mask: np.ndarray  # (H, W) float32 in [0, 1], at the image's own resolution
    box: list[float]  # [x0, y0, x1, y1] in the image's pixels, exclusive ends


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """A path, PIL image or uint8 array (H, W), (H, W, 3) or (H, W, 4) -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, Path)):
        return np.asarray(load_rgb(Path(image)))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        return array[..., :3]
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise ValueError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def preprocess(images: Sequence[np.ndarray], masker: StandaloneMasker) -> torch.Tensor:
    """RGB uint8 arrays -> a normalized (B, 3, S, S) batch at the masker's input size."""
    m = masker.manifest
    size = (m.image_size, m.image_size)
    resized = [cv2.resize(img, size, interpolation=cv2.INTER_AREA) for img in images]
    batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(m.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.std).view(1, 3, 1, 1)
    return (batch - mean) / std


@torch.inference_mode()
def explain(masker: StandaloneMasker, images: Iterable[ImageInput], batch_size: int = 32,
            amp: bool = False) -> list[Explanation]:
    """Masks and boxes for ``images`` (paths, PIL images or uint8 arrays), in their own sizes."""
    device = next(masker.parameters()).device
    arrays = [to_rgb_array(img) for img in images]
    results: list[Explanation] = []
    for start in range(0, len(arrays), batch_size):
        chunk = arrays[start: start + batch_size]
        batch = preprocess(chunk, masker).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            masks = masker(batch).float()  # (B, 1, S, S)
        for array, mask in zip(chunk, masks):
            full = F.interpolate(mask[None], size=array.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            box = predicted_boxes(full[None].cpu())[0].tolist()
            results.append(Explanation(full.clamp(0, 1).cpu().numpy(), box))
    return results


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A JET heat map of ``mask`` blended over the RGB image (OpenCV colour map)."""
    heat = cv2.applyColorMap((mask * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (image * (1 - alpha) + heat * alpha).astype(np.uint8)


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to the images inside them (sorted, recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(p)
    return out


def output_stems(files: Sequence[Path]) -> list[str]:
    """Output name per input: its stem, or where two inputs share a stem (``a/same.png``, ``b/same.png``,
    ``same.jpg``) its path below their common folder with ``__`` for ``/``, so no output overwrites another."""
    counts = Counter(p.stem for p in files)
    resolved = [p.resolve() for p in files]
    common = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    return [p.stem if counts[p.stem] == 1 else "__".join(r.relative_to(common).parts)
            for p, r in zip(files, resolved)]


def write_explanations(masker: StandaloneMasker, paths: Sequence[str | Path], out_dir: str | Path,
                       mask_format: str = "png", batch_size: int = 32, amp: bool = False,
                       progress: bool = True) -> tuple[int, list[str]]:
    """For each image: ``NAME_mask.png`` (8-bit; ``png16``: 16-bit; ``npy``: float32),
    ``NAME_overlay.png`` and ``NAME_box.json``. Unreadable images are reported and skipped.
    Returns (images written, error messages)."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = expand_inputs(paths)
    stems = dict(zip(files, output_stems(files)))
    errors: list[str] = []
    written = 0
    bar = tqdm(total=len(files), unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        chunk, arrays = [], []
        for path in files[start: start + batch_size]:
            try:
                arrays.append(to_rgb_array(path))
                chunk.append(path)
            except (CorruptImageError, FileNotFoundError, OSError, ValueError) as err:
                errors.append(f"skipped {path}: {err}")
        for path, array, result in zip(chunk, arrays, explain(masker, arrays, batch_size, amp)):
            stem = out / stems[path]
            if mask_format == "npy":
                np.save(f"{stem}_mask.npy", result.mask.astype(np.float32))
            elif mask_format == "png16":
                cv2.imwrite(f"{stem}_mask.png", np.round(result.mask * 65535).astype(np.uint16))
            else:
                cv2.imwrite(f"{stem}_mask.png", np.round(result.mask * 255).astype(np.uint8))
            cv2.imwrite(f"{stem}_overlay.png", overlay(array, result.mask)[..., ::-1])
            Path(f"{stem}_box.json").write_text(json.dumps({"image": str(path), "box_xyxy": result.box,
                                                            "width": array.shape[1], "height": array.shape[0]}))
            written += 1
        bar.update(len(files[start: start + batch_size]))
    bar.close()
    return written, errors
