"""Write an evaluation's results: metrics.json, metrics.md, figure.png and TensorBoard scalars/images."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning
import torch
import torchmetrics
import torchvision

import casm
from casm.checkpoints import write_bytes_atomically
from casm.data.images import encode_png
from casm.data.transforms import denormalize
from casm.evaluation.ranking import CONVENTIONS as RANKING_CONVENTIONS
from casm.evaluation.ranking import rank_methods, ranking_markdown
from casm.metrics import faithfulness, localization, road, wsol
from casm.metrics.localization import predicted_boxes

CONVENTIONS = {**localization.CONVENTIONS, **wsol.CONVENTIONS, **faithfulness.CONVENTIONS, **road.CONVENTIONS,
               **RANKING_CONVENTIONS}

# (table title, [(key in the results, column title, format)]); a column appears when some method has it
TABLES = [
    ("Localization", [("le", "LE ↓", "{:.3f}"), ("om", "OM ↓", "{:.3f}"),
                      ("le_other_rule", "LE, other rule ↓", "{:.3f}"),
                      ("f1", "F1 ↑", "{:.3f}"), ("f1a", "F1a ↑", "{:.3f}"),
                      ("sweep_box_accuracy", "BoxAcc @ best t ↑", "{:.3f}"), ("sweep_threshold", "best t", "{:.2f}"),
                      ("pointing_game", "pointing ↑", "{:.3f}"), ("energy_pointing_game", "energy PG ↑", "{:.3f}")]),
    ("Localization over thresholds (Choe et al. 2020)",
     [("max_box_acc_v2", "MaxBoxAccV2 ↑", "{:.1f}"), ("max_box_acc_v2_heldout", "held-out t ↑", "{:.1f}"),
      ("max_box_acc@30", "@IoU 0.3 ↑", "{:.1f}"), ("max_box_acc@50", "@0.5 ↑", "{:.1f}"),
      ("max_box_acc@70", "@0.7 ↑", "{:.1f}"), ("pxap", "PxAP ↑", "{:.1f}")]),
    ("Mask statistics", [("mask_mean", "mean", "{:.3f}"), ("mask_std", "std of means", "{:.3f}"),
                         ("mask_entropy", "entropy", "{:.3f}"), ("mask_tv", "TV", "{:.4f}")]),
    ("Faithfulness", [("deletion", "deletion ↓", "{:.3f}"), ("insertion", "insertion ↑", "{:.3f}"),
                      ("average_drop", "avg drop ↓", "{:.1f}"), ("increase_in_confidence", "increase ↑", "{:.1f}"),
                      ("road", "ROAD ↑", "{:.3f}"), ("road_morf", "ROAD MoRF ↓", "{:.3f}"),
                      ("road_lerf", "ROAD LeRF ↑", "{:.3f}")]),
    ("Top-1 % on masked images (own classifier, then each judge)",
     [("acc_masked_in", "in ↑", "{:.1f}"), ("acc_masked_out", "out ↓", "{:.1f}"),
      ("acc_inpainted", "inpainted ↓", "{:.1f}")]),
    ("Speed", [("ms_per_image", "ms / image", "{:.2f}"), ("images", "images", "{:d}"),
               ("nan_maps", "NaN maps", "{:d}")]),
]


def versions() -> dict[str, str]:
    return {"casm": casm.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "torchmetrics": torchmetrics.__version__, "opencv": cv2.__version__}


def _table(results: dict[str, dict[str, float]], columns: list[tuple[str, str, str]]) -> str:
    columns = [c for c in columns if any(c[0] in r for r in results.values())]
    rows = [name for name, r in results.items() if any(c[0] in r for c in columns)]
    if not columns or not rows:
        return ""
    lines = ["| method | " + " | ".join(title for _, title, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for name in rows:
        r = results[name]
        cells = [fmt.format(int(r[k]) if fmt == "{:d}" else r[k]) if k in r else "—" for k, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(results: dict[str, dict[str, float]], judge_classes: dict[str, str] | None = None) -> str:
    """The report as Markdown: one table per group of metrics. ``judge_classes``: for each judge that knows
    only some of the evaluated classes, how many ("3/10 classes"), shown in its columns' titles."""
    judges = sorted({k.split("@", 1)[1] for r in results.values() for k in r if k.startswith("acc_") and "@" in k})
    coverage = judge_classes or {}
    known = {j: f" ({coverage[j]})" if j in coverage else "" for j in judges}
    parts = []
    for title, columns in TABLES:
        if title.startswith("Top-1"):
            columns = columns + [(f"{key}@{j}", f"{t.split()[0]} @{j}{known[j]}", fmt) for j in judges
                                 for key, t, fmt in columns]
        table = _table(results, columns)
        if table:
            parts.append(f"### {title}\n\n{table}")
    return "\n".join(parts)


def figure(evaluator, scale: int = 3) -> np.ndarray | None:
    """Rows: images. Columns: the image with its ground-truth boxes (green), then each method's map
    as a heat map over the image with its predicted box (red)."""
    if evaluator.figure_images is None:
        return None
    images = (denormalize(evaluator.figure_images).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    rows = []
    for i, img in enumerate(images):
        tiles = [img.copy()]
        gt, valid = evaluator.figure_boxes[i]
        for box, ok in zip(gt.tolist(), valid.tolist()):
            if ok:
                cv2.rectangle(tiles[0], (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1), (0, 255, 0), 1)
        for maps in evaluator.figure_maps.values():
            if maps[i] is None:  # e.g. Score-CAM beyond max_images_slow, or a NaN map
                tiles.append(np.zeros_like(img))
                continue
            heat = cv2.applyColorMap((maps[i].numpy() * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            tile = (img * 0.4 + heat * 0.6).astype(np.uint8)
            x0, y0, x1, y1 = (int(v) for v in predicted_boxes(maps[i][None], evaluator.cfg.binarization)[0].tolist())
            cv2.rectangle(tile, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 0, 0), 1)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    tile_w = images.shape[2] * scale
    for j, title in enumerate(["image + boxes", *evaluator.figure_maps]):
        cv2.putText(header, title[:18], (j * tile_w + 3, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return np.concatenate([header, grid], axis=0)


def write_reports(out: Path, results: dict, evaluator, eval_config: dict, train_config: dict,
                  notes: list[str]) -> None:
    from torch.utils.tensorboard import SummaryWriter  # deferred: TensorBoard's import is slow

    out.mkdir(parents=True, exist_ok=True)
    clean_top1 = {name: value for name, value in evaluator.clean_top1.items() if value == value}  # not NaN
    ranking = rank_methods(results)
    payload = {"results": results, "ranking": ranking, "clean_top1": clean_top1,
               "judge_classes": evaluator.partial_judges, "notes": notes,
               "eval_config": eval_config, "training_config": train_config, "versions": versions(),
               "conventions": CONVENTIONS}
    table = markdown_table(results, evaluator.partial_judges) + "\n" + ranking_markdown(ranking)
    _write(out / "metrics.md", (table + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")).encode())
    grid = figure(evaluator)
    if grid is not None:
        _write(out / "figure.png", encode_png(grid[..., ::-1]))
    writer = SummaryWriter(str(out / "tensorboard"))
    for method, r in results.items():
        for key, value in r.items():
            writer.add_scalar(f"{method}/{key}", value)
    if grid is not None:
        writer.add_image("eval/figure", grid, dataformats="HWC")
    writer.close()
    # last: a complete metrics.json is what marks the evaluation done (a study does not make it again)
    _write(out / "metrics.json", json.dumps(payload, indent=2).encode())


def _write(path: Path, data: bytes) -> None:
    write_bytes_atomically(path, data, "evaluation report", elsewhere="set out_dir to a folder on another disk")
