"""A procedurally generated, offline localization dataset ("casm shapes").

Why it looks the way it does: the CASM paper's claim is that a masker trained against *one*
classifier only erases the evidence that classifier happens to use, while a classifier-agnostic
masker erases *all* the evidence. That can only show on data where the evidence is redundant. Here
every class is identified, independently, by three cues spread over the object:

* its **shape** (the body outline),
* its **texture** (the pattern inside the body),
* its **part** (a small appendage at a class-specific place).

Any one cue is enough to classify, so a classifier may well learn only one of them; erasing the
whole object is the only way to defeat *every* classifier. Colours are random per image (never a
class cue) and the background carries class-independent clutter (blobs, bars, noise), so a mask that
covers everything is not free either.

Each sample is a deterministic function of ``(seed, split, index)``; nothing is stored on disk.

**Many-class variants** (unseen-class experiments need more than ten classes): with 100 classes a
class is a (shape, texture, part) triple with ``part = (shape + texture) mod 10`` (a Latin square), so
any *two* of its three cues identify it and each cue value is shared by ten classes; with 1000
classes every triple is a class and all three cues are needed. A class the classifier never saw is
then a new combination of cue values it has seen on other classes: "unseen" means an unseen
*combination*, not unseen shapes, textures or parts (:func:`missing_cues` lists any exception).

Boxes are ``[x0, y0, x1, y1]`` in pixels with exclusive ends (a pixel ``i`` spans ``[i, i+1)``).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from casm.errors import UserError

SHAPES = ("circle", "square", "triangle_up", "triangle_down", "diamond", "hexagon", "plus", "star",
          "wide_ellipse", "tall_ellipse")
TEXTURES = ("h_stripes", "v_stripes", "diag_stripes", "antidiag_stripes", "checker", "dots", "rings",
            "grid", "plain", "speckle")
PARTS = ("top_disc", "bottom_disc", "left_disc", "right_disc", "top_left_block", "top_right_block",
         "bottom_left_block", "bottom_right_block", "two_ears", "two_legs")
CLASS_COUNTS = (10, 100, 1000)  # the generator's variants (see the module docstring)


@functools.lru_cache(maxsize=None)
def class_cues(num_classes: int = 10) -> tuple[tuple[int, int, int], ...]:
    """(shape, texture, part) indices of every class of the ``num_classes`` variant, in label order."""
    if num_classes == 10:
        return tuple((i, i, i) for i in range(10))  # one cue identifies a class
    if num_classes == 100:
        return tuple((s, t, (s + t) % 10) for s in range(10) for t in range(10))  # any two cues do
    if num_classes == 1000:
        return tuple((s, t, p) for s in range(10) for t in range(10) for p in range(10))  # all three
    raise UserError(f"data.synthetic_classes={num_classes} is not one of {', '.join(map(str, CLASS_COUNTS))}")


def class_names(num_classes: int = 10) -> tuple[str, ...]:
    return tuple(f"{SHAPES[s]}+{TEXTURES[t]}+{PARTS[p]}" for s, t, p in class_cues(num_classes))


def missing_cues(seen: list[str], num_classes: int) -> dict[str, list[str]]:
    """Cue values (shapes, textures, parts) that none of the ``seen`` class names shows."""
    shown = [set(part) for part in zip(*(name.split("+") for name in seen))] if seen else [set(), set(), set()]
    return {family: [v for v in values if v not in shown[i]]
            for i, (family, values) in enumerate((("shape", SHAPES), ("texture", TEXTURES), ("part", PARTS)))}


CLASS_NAMES = class_names(10)
NUM_CLASSES = len(CLASS_NAMES)


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: int  # class id of the generator's variant
    box: np.ndarray  # (4,) float32 [x0, y0, x1, y1], exclusive ends
    mask: np.ndarray  # (H, W) bool, the object's pixels


def _polygon(shape: str, cx: float, cy: float, r: float) -> np.ndarray | None:
    """Vertices of a polygonal body, or None for the shapes drawn as ellipses."""
    if shape == "square":
        s = r * 0.85
        pts = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif shape == "triangle_up":
        pts = [(0, -r), (r, r * 0.8), (-r, r * 0.8)]
    elif shape == "triangle_down":
        pts = [(0, r), (r, -r * 0.8), (-r, -r * 0.8)]
    elif shape == "diamond":
        pts = [(0, -r), (r, 0), (0, r), (-r, 0)]
    elif shape == "hexagon":
        pts = [(r * np.cos(a), r * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
    elif shape == "plus":
        a, b = r, r * 0.4
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
               (-a, -b), (-b, -b)]
    elif shape == "star":
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.5)
        pts = [(rad * np.cos(a), rad * np.sin(a)) for rad, a in zip(radii, angles)]
    else:
        return None
    return np.array([(cx + x, cy + y) for x, y in pts], dtype=np.float64)


def _draw_body(canvas: np.ndarray, shape: str, cx: float, cy: float, r: float) -> None:
    shift = 4  # sub-pixel precision for OpenCV's integer drawing API
    scale = 1 << shift
    poly = _polygon(shape, cx, cy, r)
    if poly is not None:
        cv2.fillPoly(canvas, [np.round(poly * scale).astype(np.int32)], 255, cv2.LINE_AA, shift)
        return
    axes = {"circle": (r, r), "wide_ellipse": (r, r * 0.55), "tall_ellipse": (r * 0.55, r)}[shape]
    cv2.ellipse(canvas, (round(cx * scale), round(cy * scale)),
                (round(axes[0] * scale), round(axes[1] * scale)), 0, 0, 360, 255, -1, cv2.LINE_AA, shift)


def _draw_part(canvas: np.ndarray, part: str, cx: float, cy: float, r: float) -> None:
    """Draw the class-specific appendage, touching the body's bounding circle."""
    pr = r * 0.32
    d = r + pr * 0.6  # centre distance: overlaps the body a little so the object stays connected
    q = d / np.sqrt(2)
    centres = {
        "top_disc": [(0, -d)], "bottom_disc": [(0, d)], "left_disc": [(-d, 0)], "right_disc": [(d, 0)],
        "top_left_block": [(-q, -q)], "top_right_block": [(q, -q)], "bottom_left_block": [(-q, q)],
        "bottom_right_block": [(q, q)], "two_ears": [(-q, -q), (q, -q)], "two_legs": [(-r * 0.5, d), (r * 0.5, d)],
    }[part]
    for dx, dy in centres:
        px, py = cx + dx, cy + dy
        if part.endswith("disc"):
            cv2.circle(canvas, (round(px * 16), round(py * 16)), round(pr * 16), 255, -1, cv2.LINE_AA, 4)
        else:
            s = pr * (0.8 if part in ("two_ears", "two_legs") else 0.9)
            pts = np.array([(px - s, py - s), (px + s, py - s), (px + s, py + s), (px - s, py + s)])
            cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)


def _texture(texture: str, xx: np.ndarray, yy: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """A pattern in [0, 1] over object-local coordinates (it moves with the object)."""
    w = 2 * np.pi / period
    if texture == "h_stripes":
        t = np.sin(w * yy)
    elif texture == "v_stripes":
        t = np.sin(w * xx)
    elif texture == "diag_stripes":
        t = np.sin(w * (xx + yy) / np.sqrt(2))
    elif texture == "antidiag_stripes":
        t = np.sin(w * (xx - yy) / np.sqrt(2))
    elif texture == "checker":
        t = np.sin(w * xx) * np.sin(w * yy)
    elif texture == "dots":
        t = np.cos(w * xx) * np.cos(w * yy) - 0.5
    elif texture == "rings":
        t = np.sin(w * np.hypot(xx, yy))
    elif texture == "grid":
        t = np.maximum(np.cos(w * xx), np.cos(w * yy)) - 0.6
    elif texture == "plain":
        t = np.full_like(xx, 1.0)
    else:  # speckle: coarse random blotches, a texture with no orientation
        h, wd = xx.shape
        small = rng.random((max(2, int(h / period * 2)), max(2, int(wd / period * 2))))
        t = cv2.resize(small, (wd, h), interpolation=cv2.INTER_NEAREST) - 0.5
    return (t > 0).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _contrasting_pair(rng: np.random.Generator, min_distance: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    for _ in range(50):
        a, b = _random_colour(rng), _random_colour(rng)
        if np.linalg.norm(a - b) >= min_distance:
            return a, b
    return np.zeros(3, np.float32), np.full(3, 255, np.float32)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random gradient plus class-independent clutter: blobs and bars of random colour."""
    c0, c1 = _random_colour(rng), _random_colour(rng)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    if rng.random() < 0.5:
        ramp = ramp[:, None].repeat(size, 1)
    else:
        ramp = ramp[None, :].repeat(size, 0)
    img = (c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]).astype(np.float32)
    for _ in range(rng.integers(3, 7)):
        colour = tuple(float(v) for v in _random_colour(rng))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        extent = max(2, int(size * rng.uniform(0.04, 0.12)))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(img, (x, y), extent, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (x, y), (x + extent, y + int(extent * rng.uniform(0.5, 1.5))), colour, -1)
        else:
            x2, y2 = (int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, (x, y), (x2, y2), colour, max(1, size // 48), cv2.LINE_AA)
    return img


def render_sample(class_id: int, rng: np.random.Generator, image_size: int = 64, num_classes: int = 10) -> Sample:
    """Draw one image of class ``class_id`` of the ``num_classes`` variant; every random choice comes
    from ``rng``."""
    size = image_size
    img = _background(size, rng)
    s, t, p = class_cues(num_classes)[class_id]
    shape, texture, part = SHAPES[s], TEXTURES[t], PARTS[p]
    r = size * rng.uniform(0.17, 0.26)  # body radius; with its part the object spans ~45-75 % of a side
    margin = r * 1.75
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)

    alpha = np.zeros((size, size), np.uint8)
    _draw_body(alpha, shape, cx, cy, r)
    body = alpha.copy()
    _draw_part(alpha, part, cx, cy, r)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / 64 * rng.uniform(4.5, 6.5)
    pattern = _texture(texture, xx - cx + rng.uniform(0, period), yy - cy + rng.uniform(0, period), period, rng)
    colour_a, colour_b = _contrasting_pair(rng)
    body_fill = colour_a * pattern[..., None] + colour_b * (1 - pattern[..., None])
    # the part is drawn in a plain third colour: it is a cue of its own, not more texture
    part_colour = _random_colour(rng)
    is_body = body.astype(np.float32)[..., None] / 255
    fill = body_fill * is_body + part_colour * (1 - is_body)

    a = alpha.astype(np.float32)[..., None] / 255
    img = img * (1 - a) + fill * a
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)

    mask = alpha > 127
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
    return Sample(image=image, label=class_id, box=box, mask=mask)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent, reproducible randomness per sample, whatever the worker or order."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])
