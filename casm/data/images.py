"""Reading image files as 8-bit RGB, whatever they hold.

Every image casm reads (folder datasets, ImageNet, ``casm explain``) goes through :func:`load_rgb`,
so the same rules hold everywhere:

* greyscale, palette, RGBA, CMYK and animated files (first frame) become RGB;
* 16-bit and 32-bit integer images are scaled from their 16-bit range (``/ 257``) and float images
  from [0, 1] (or from their own min..max when they leave it), instead of being clipped to 255, which
  turns a 16-bit scan all white;
* files Pillow cannot open (multi-channel float TIFF) are read with OpenCV;
* an image above ``max_pixels`` is refused from its header, before any pixel is decoded (a
  decompression bomb: a small PNG that unpacks to gigabytes), with the way to raise the limit.

Pillow's own bomb check is off while casm opens a file: casm's check replaces it, with a message
that names the file and the setting, and a limit the user can move.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from casm.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalization every casm model sees its input in
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # GIF: its first frame
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # Pillow's decompression-bomb error threshold (~179 MP)
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class CorruptImageError(UserError):
    """An image file that cannot be decoded; the message names the file and the way past it."""


class ImageTooLargeError(CorruptImageError):
    """An image whose header promises more pixels than the limit (a possible decompression bomb)."""


def to_uint8(array: np.ndarray, path: Path | str = "image") -> np.ndarray:
    """Scale an image array of any depth to uint8: 16/32-bit integers from the 16-bit range, floats
    from [0, 1] (from their own min..max when outside it)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "ui":
        return (np.clip(array.astype(np.float32), 0, 65535) / 257).round().astype(np.uint8)
    if array.dtype.kind == "f":
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise CorruptImageError(f"cannot read image {path}: it holds NaN or infinite pixel values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:  # not a [0, 1] image: stretch its own range
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return (values * 255).round().astype(np.uint8)
    raise CorruptImageError(f"cannot read image {path}: pixel type {array.dtype} is not supported")


def three_channels(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def rgb_image(img: Image.Image, source: Path | str = "image") -> Image.Image:
    """A PIL image of any mode as 8-bit RGB: high-depth modes scaled by :func:`to_uint8`, the rest by
    Pillow's own conversion (greyscale, palette, RGBA, CMYK)."""
    if img.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(three_channels(to_uint8(np.asarray(img), source)))
    return img.convert("RGB")


def _read_with_opencv(path: Path) -> Image.Image:
    """Files Pillow cannot open (e.g. 3-channel float32 TIFF); OpenCV returns BGR(A)."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise CorruptImageError(f"cannot read image {path}: neither Pillow nor OpenCV can decode it")
    if array.ndim == 3 and array.shape[2] >= 3:
        array = array[..., [2, 1, 0]]
    return Image.fromarray(three_channels(to_uint8(array, path)))


def load_rgb(path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open any image as 8-bit RGB (see the module's rules); name the file on failure."""
    path = Path(path)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # casm checks the size itself, below, before decoding
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                pixels = img.width * img.height
                if max_pixels is not None and pixels > max_pixels:
                    raise ImageTooLargeError(
                        f"image {path} is {img.width}x{img.height} = {pixels / 1e6:g} MP, above the "
                        f"{max_pixels / 1e6:g} MP limit that guards against decompression bombs")
                return rgb_image(img, path)
    except UnidentifiedImageError as err:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_with_opencv(path)
        raise CorruptImageError(f"cannot read image {path}: {err}") from err
    except (OSError, ValueError, SyntaxError) as err:
        if isinstance(err, CorruptImageError):
            raise
        raise CorruptImageError(f"cannot read image {path}: {err}") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def encode_png(image: np.ndarray) -> bytes:
    """An (H, W) or BGR (H, W, 3) array, 8- or 16-bit, as the bytes of a PNG file (written atomically by the
    caller, so a full disk leaves no half-written image)."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.dtype} image of shape {image.shape} as PNG")
    return encoded.tobytes()
