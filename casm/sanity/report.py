"""The ``python -m casm sanity`` report: the manipulation attacks (attacks.py) and the cascading
randomization (randomization.py) of one training run, on its first validation images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import torch
from omegaconf import OmegaConf
from torch import Tensor

from casm.config import DataConfig
from casm.data.datamodule import LocalizationDataModule
from casm.data.transforms import denormalize, normalize_images
from casm.errors import UserError
from casm.models import ResNetClassifier, ResNetTrunk
from casm.models.manipulation import ATTACKS
from casm.sanity.attacks import METHODS, attacks_table, run_attacks
from casm.sanity.randomization import plot_cascades, run_cascades
from casm.trained_run import read_run


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
    from torch.utils.tensorboard import SummaryWriter  # deferred: TensorBoard's import is slow

    run = read_run(checkpoint)
    own_encoder = run.masker.encoder is None or isinstance(run.masker.encoder, ResNetTrunk)
    if not isinstance(run.classifier, ResNetClassifier) or not own_encoder:
        raise UserError(f"{checkpoint}: its classifier or the masker's encoder comes from outside casm "
                        f"(model.classifier, masker.encoder_model); the sanity checks edit and randomize casm's own "
                        f"ResNet stages (docs/sanity.md), so they do not apply to it")
    x, y = validation_images(run.config, images, device)
    count = len(x)
    out = Path(out) if out else run.folder / "sanity"
    classifier = run.classifier.to(device).eval()
    results = run_attacks(classifier, x, y, out, attacks, slow_images=slow_images, denormalize=denormalize)
    report = {"checkpoint": str(checkpoint), "images": count, "attacks": results}
    text = "# Manipulation attacks\n\n" + attacks_table(results) + "\n"
    if randomization:
        masker = run.masker.standalone(run.classifier.trunk).to(device).eval()
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
