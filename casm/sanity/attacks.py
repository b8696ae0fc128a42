"""Measure the manipulation attacks on a trained classifier: what its outputs keep, where each CAM
method's maps go (``python -m casm sanity``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from casm.baselines import BASELINES
from casm.baselines.base import logits_of
from casm.models.manipulation import (
    ATTACKS,
    attack_target,
    manipulate,
    map_distance,
    paste_sticker,
    sticker_pattern,
)

METHODS = ("cam", "gradcam", "gradcampp", "scorecam")


def raw_maps(model: nn.Module, method: str, images: Tensor, chunk: int = 256) -> Tensor:
    """(B, H, W) unscaled maps of ``method`` (the scale is the comparison's business: :func:`map_distance`)."""
    kwargs = {"chunk_size": chunk} if method == "scorecam" else {}
    with BASELINES[method](model, "trunk.layer4", normalize=False, **kwargs) as explain:
        return explain(images).detach()


def sticker_place(size: int, sticker: int) -> tuple[int, int]:
    """T4's sticker: the bottom-left corner, a sticker's width in from the edges."""
    return size - 2 * sticker, sticker


@torch.no_grad()
def _logits(model: nn.Module, images: Tensor) -> Tensor:
    return logits_of(model(images)).float()


def measure_attack(classifier: nn.Module, attack: str, images: Tensor, labels: Tensor,
                   methods: tuple[str, ...] = METHODS, slow_images: int = 8) -> tuple[dict, dict[str, Tensor]]:
    """One attack's numbers and the maps for its figure.

    Returns ``(numbers, maps)``: accuracy before/after (T4: on stickered images, and clean accuracy kept
    without it), the largest logit change, and per method the mean L1 distance of the manipulated
    model's maps to the attacker's target (and of the original model's, for reference). Score-CAM runs on
    the first ``slow_images`` images only."""
    size = images.shape[-1]
    model = manipulate(classifier, attack, size).to(images.device)
    shown = images
    if attack == "T4":
        sticker = sticker_pattern().to(images.device)
        shown = paste_sticker(images, sticker, *sticker_place(size, sticker.shape[-1]))
    before, after = _logits(classifier, shown), _logits(model, shown)
    numbers = {"attack": attack, "images": len(images),
               "accuracy_before": float((before.argmax(1) == labels).float().mean()),
               "accuracy_after": float((after.argmax(1) == labels).float().mean()),
               "max_logit_change": float((after - before).abs().max()), "methods": {}}
    if attack == "T4":
        clean_before, clean_after = _logits(classifier, images), _logits(model, images)
        numbers["accuracy_without_sticker_after"] = float((clean_after.argmax(1) == labels).float().mean())
        numbers["max_logit_change_without_sticker"] = float((clean_after - clean_before).abs().max())
    target = attack_target(model, shown)
    maps = {"image": shown, "target": target}
    for method in methods:
        rows = slice(0, slow_images) if method == "scorecam" else slice(None)
        manipulated, original = raw_maps(model, method, shown[rows]), raw_maps(classifier, method, shown[rows])
        numbers["methods"][method] = {
            "l1_to_target": float(map_distance(manipulated, target[rows]).mean()),
            "l1_original_to_target": float(map_distance(original, target[rows]).mean()),
            "images": len(manipulated)}
        if attack == "T4":  # without the sticker the maps should be the original ones
            clean = raw_maps(model, method, images[rows])
            numbers["methods"][method]["l1_without_sticker_to_original"] = float(
                map_distance(clean, raw_maps(classifier, method, images[rows])).mean())
        maps[f"{method}/original"], maps[f"{method}/manipulated"] = original, manipulated
    return numbers, maps


TILE = 128  # pixels per picture in the grids (small images are enlarged so the titles fit)


def _tile(picture: np.ndarray) -> np.ndarray:
    return cv2.resize(picture, (TILE, TILE), interpolation=cv2.INTER_NEAREST)


def _colour(map_: Tensor) -> np.ndarray:
    m = map_.float()
    m = (m / m.max().clamp(min=1e-12)).clamp(0, 1)
    return _tile(cv2.applyColorMap((m.cpu().numpy() * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1])


def attack_grid(maps: dict[str, Tensor], path: Path, rows: int = 4, denormalize=None) -> None:
    """A PNG: per image row, the image, the attacker's target, then each method's map before and after."""
    columns = [k for k in maps if k != "image"]
    tiles = []
    for i in range(min(rows, len(maps["image"]))):
        image = denormalize(maps["image"][i: i + 1])[0] if denormalize else maps["image"][i]
        row = [_tile((image.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))]
        row += [_colour(maps[c][i]) if i < len(maps[c]) else np.zeros_like(row[0]) for c in columns]
        tiles.append(np.concatenate(row, axis=1))
    grid = np.concatenate(tiles, axis=0)
    header = np.full((18, grid.shape[1], 3), 255, np.uint8)
    for j, title in enumerate(["image", *columns]):
        title = title.replace("/original", " original").replace("/manipulated", " attacked")
        cv2.putText(header, title, (j * TILE + 3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
    cv2.imwrite(str(path), np.concatenate([header, grid], axis=0)[..., ::-1])


def run_attacks(classifier: nn.Module, images: Tensor, labels: Tensor, out: Path,
                attacks: tuple[str, ...] = ATTACKS, methods: tuple[str, ...] = METHODS, slow_images: int = 8,
                denormalize=None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for attack in attacks:
        numbers, maps = measure_attack(classifier, attack, images, labels, methods, slow_images)
        attack_grid(maps, out / f"attack_{attack}.png", denormalize=denormalize)
        results.append(numbers)
    return results


def attacks_table(results: list[dict]) -> str:
    methods = list(results[0]["methods"]) if results else []
    lines = ["| attack | top-1 before → after | largest logit change | " +
             " | ".join(f"{m} L1 to target (original's)" for m in methods) + " |",
             "|---" * (3 + len(methods)) + "|"]
    for r in results:
        cells = [f"{r['methods'][m]['l1_to_target']:.3f} ({r['methods'][m]['l1_original_to_target']:.3f})"
                 for m in methods]
        lines.append(f"| {r['attack']} | {r['accuracy_before']:.3f} → {r['accuracy_after']:.3f} | "
                     f"{r['max_logit_change']:.2g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
