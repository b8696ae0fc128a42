"""Write a small ImageFolder dataset that is *not* casm's built-in one: handwritten-style digits on clutter.

    python examples/digits_on_clutter.py data/digits --train 2000 --val 400 [--size 64 --seed 0]

``ROOT/train/<digit>/*.png``, ``ROOT/val/<digit>/*.png`` and ``ROOT/val_boxes.csv`` (image,x0,y0,x1,y1
of the digit's tight box), the layout of README "Your own data". What makes it a test of the own-data
path: digits are not mirror-symmetric (a flip turns a 2 into something else), they cover a small part
of a 64-px image (an 8 % RandomResizedCrop often holds none of it), and the clutter holds letters drawn
like the digits, so the object is not the only glyph in the picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

DIGIT_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)
FONTS = DIGIT_FONTS + (cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,)
LETTERS = "ACEFHKLMPRTUVWXY"


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _luminance(colour) -> float:
    return float(np.dot(colour, (0.299, 0.587, 0.114)))


def _legible_ink(background: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """A random ink colour that differs from the paper's by at least 80 grey levels, as legible writing does."""
    while True:
        ink = _colour(rng)
        if abs(_luminance(ink) - _luminance(background)) >= 80:
            return ink


def render(digit: int, rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, list[int]]:
    """One image (H, W, 3 uint8) of ``digit`` and the digit's tight box [x0, y0, x1, y1) in pixels."""
    background = _colour(rng)
    img = np.full((size, size, 3), background, np.uint8)
    for _ in range(rng.integers(4, 9)):  # clutter: lines, discs and letters in random colours
        kind = rng.integers(3)
        x, y = (int(v) for v in rng.integers(0, size, 2))
        if kind == 0:
            x2, y2 = (int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, (x, y), (x2, y2), _colour(rng), int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(2, 7)), _colour(rng), -1, cv2.LINE_AA)
        else:
            cv2.putText(img, LETTERS[rng.integers(len(LETTERS))], (x - 6, y + 6), FONTS[rng.integers(len(FONTS))],
                        size / 128 * rng.uniform(0.6, 1.0), _colour(rng), 1, cv2.LINE_AA)
    font, scale = DIGIT_FONTS[rng.integers(len(DIGIT_FONTS))], size / 64 * rng.uniform(1.1, 1.6)
    thickness = int(rng.integers(2, 4))
    (w, h), base = cv2.getTextSize(str(digit), font, scale, thickness)
    x = int(rng.integers(0, max(1, size - w)))
    y = int(rng.integers(h, max(h + 1, size - base)))
    alpha = np.zeros((size, size), np.uint8)
    cv2.putText(alpha, str(digit), (x, y), font, scale, 255, thickness, cv2.LINE_AA)
    angle = rng.uniform(-15, 15)  # a slight slant, as handwriting has
    rotation = cv2.getRotationMatrix2D((x + w / 2, y - h / 2), angle, 1.0)
    alpha = cv2.warpAffine(alpha, rotation, (size, size))
    ink = np.array(_legible_ink(background, rng), np.float32)
    a = alpha[..., None].astype(np.float32) / 255
    img = (img * (1 - a) + ink * a + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)
    ys, xs = np.nonzero(alpha > 127)
    return img, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def write(root: Path, train: int, val: int, size: int = 64, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = ["image,x0,y0,x1,y1"]
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            digit = i % 10
            img, box = render(digit, rng, size)
            path = root / split / str(digit) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), img[..., ::-1])
            if split == "val":
                rows.append(f"{digit}/{i:05d}.png," + ",".join(map(str, box)))
    (root / "val_boxes.csv").write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.root, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} training and {args.val} validation images to {args.root}")


if __name__ == "__main__":
    main()
