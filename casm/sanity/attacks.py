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
from casm.sanity.manipulation import (
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


def cascade_table(curves: dict[str, list[dict]], chance: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown: per method, Spearman / SSIM after each stage of the cascade, and (given) its chance level."""
    stages = max(len(rows) for rows in curves.values())
    chance = chance or {}
    lines = ["| method (Spearman / SSIM) | another image's map (chance) | " +
             " | ".join(f"{k} stage(s)" for k in range(1, stages + 1)) + " |", "|---" * (stages + 2) + "|"]
    for method, rows in curves.items():
        level = f"{chance[method]['spearman']:.2f} / {chance[method]['ssim']:.2f}" if method in chance else "—"
        lines.append(f"| {method} | {level} | " + " | ".join(f"{r['stage']}: {r['spearman']:.2f} / {r['ssim']:.2f}"
                                                             for r in rows) + " |")
    return "\n".join(lines)


def validation_images(config: dict, count: int, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """The first ``count`` validation images of a run's data (normalized, as the models see them) and labels."""
    from omegaconf import OmegaConf

    from casm.config import DataConfig
    from casm.data.datamodule import LocalizationDataModule
    from casm.data.transforms import normalize_images

    data = OmegaConf.merge(OmegaConf.structured(DataConfig), config["data"], {"samples_per_class": None})
    dm = LocalizationDataModule(data, config.get("seed", 0), splits=("val",))
    dm.setup()
    count = min(count, len(dm.val_set))
    x = normalize_images(torch.stack([dm.val_set[i]["image"].as_subclass(Tensor) for i in range(count)]))
    y = torch.tensor([dm.val_set[i]["label"] for i in range(count)])
    return x.to(device), y.to(device)


def sanity_report(checkpoint: str | Path, out: Path | None = None, images: int = 64, slow_images: int = 8,
                  attacks: tuple[str, ...] = ATTACKS, device: str = "cpu", randomization: bool = True
                  ) -> tuple[dict, Path]:
    """The manipulation attacks on a training checkpoint's classifier and the cascading randomization of
    its classifier (for each CAM method) and of its masker, on the first ``images`` validation images:
    ``sanity.json``, ``sanity.md``, ``attack_T*.png``, ``randomization.png`` and TensorBoard in ``out``
    (default RUN/sanity)."""
    import json

    from torch.utils.tensorboard import SummaryWriter

    from casm.data.transforms import denormalize
    from casm.sanity.randomization import plot_cascades, run_cascades
    from casm.training.module import load_trained

    module, config = load_trained(checkpoint)
    x, y = validation_images(config, images, device)
    count = len(x)
    out = Path(out) if out else Path(checkpoint).resolve().parent.parent / "sanity"
    classifier = module.classifier.to(device).eval()
    results = run_attacks(classifier, x, y, out, attacks, slow_images=slow_images, denormalize=denormalize)
    report = {"checkpoint": str(checkpoint), "images": count, "attacks": results}
    text = "# Manipulation attacks\n\n" + attacks_table(results) + "\n"
    if randomization:
        masker = module.masker.standalone(module.classifier.trunk).to(device).eval()
        report["randomization"], report["randomization_chance"] = run_cascades(classifier, masker, x, METHODS,
                                                                              slow_images)
        plot_cascades(report["randomization"], out / "randomization.png", report["randomization_chance"])
        text += "\n# Cascading randomization\n\n" + cascade_table(report["randomization"],
                                                                 report["randomization_chance"]) + "\n"
    (out / "sanity.json").write_text(json.dumps(report, indent=1))
    (out / "sanity.md").write_text(text)
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for r in results:
            for method, m in r["methods"].items():
                writer.add_scalar(f"attack_{r['attack']}/l1_to_target/{method}", m["l1_to_target"])
            grid = cv2.imread(str(out / f"attack_{r['attack']}.png"))[..., ::-1].copy()
            writer.add_image(f"attack_{r['attack']}", grid, dataformats="HWC")
        for method, rows in report.get("randomization", {}).items():
            for step, row in enumerate(rows, start=1):
                writer.add_scalar(f"randomization/{method}/spearman", row["spearman"], step)
                writer.add_scalar(f"randomization/{method}/ssim", row["ssim"], step)
    return report, out
