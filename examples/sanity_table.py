"""The sanity study's mask comparison: python examples/sanity_table.py [STUDY]
(default runs/studies/sanity_under_attack, the folder of
``python -m casm experiment study --config configs/studies/sanity_under_attack.yaml``).

The study report (STUDY/report/study.md) already gives every variant's LE, OM, mask size and masked-out
accuracies over seeds. What it cannot give is whether an attack moved the *masks*: per seed, the masks of
the masker trained against an attacked classifier against those of the masker trained against the
original classifier with the same seed (mean L1, IoU of the regions > 0.5), next to the seed-to-seed
distance of the original's maskers. Also one row per shuffled-label run, whose seeds behave too
differently for a mean. Writes STUDY/report/sanity_tables.md and STUDY/report/masks_under_attack.png.
"""

import json
import sys
from pathlib import Path

from casm.data.transforms import denormalize
from casm.experiments.statistics import summarize
from casm.sanity.attacks import attack_grid
from casm.sanity.report import validation_images
from casm.sanity.under_attack import compare_to_reference, masks_of
from casm.trained_run import read_run

VARIANTS = ("original", "T1", "T2", "T3", "T4")
IMAGES = 500  # the whole validation split of the built-in data


def cell(values: list[float]) -> str:
    """mean ± sd over the seeds (one decimal for percentages)."""
    s = summarize(values)
    digits = 3 if abs(values[0]) < 2 else 1
    return f"{s.mean:.{digits}f} ± {s.sd or 0:.{digits}f}"


def finished_seeds(study: Path, variant: str) -> dict[int, Path]:
    """seed -> run folder, for the runs of ``variant`` whose evaluation exists."""
    runs = (study / "runs" / variant).glob("seed*")
    return {int(run.name[4:]): run for run in runs if (run / "eval" / "metrics.json").is_file()}


def results(run: Path) -> dict:
    return json.loads((run / "eval" / "metrics.json").read_text())["results"]


def under_attack(study: Path, report: Path) -> str:
    runs = {v: finished_seeds(study, v) for v in VARIANTS}
    if not runs["original"]:
        return "(no finished run against the original classifier)"
    first = next(iter(runs["original"].values()))
    images, _ = validation_images(read_run(first / "checkpoints" / "last.ckpt").config, IMAGES)
    masks = {v: {seed: masks_of(run / "checkpoints" / "last.ckpt", images) for seed, run in by_seed.items()}
             for v, by_seed in runs.items() if by_seed}
    attack_grid({"image": images, **{v: masks[v][0] for v in masks if 0 in masks[v]}},
                report / "masks_under_attack.png", rows=4, denormalize=denormalize)
    agreement = compare_to_reference(masks)
    lines = ["| masker trained against | seeds | LE | OM | mask mean | judge (= original) masked-out % | "
             "mask L1 to the original's (same seed) | IoU (mask > 0.5) |", "|---" * 8 + "|"]
    for variant in VARIANTS:
        scores = [results(run)["casm"] for _, run in sorted(runs[variant].items())]
        if not scores:
            continue
        numbers = [cell([s[k] for s in scores]) for k in ("le", "om", "mask_mean", "acc_masked_out@judge")]
        rows = agreement.get(variant, [])
        distance = [cell([r["l1"] for r in rows]), cell([r["iou"] for r in rows])] if rows else ["—", "—"]
        lines.append(f"| {variant} | {len(scores)} | " + " | ".join(numbers + distance) + " |")
    yardstick = agreement["original, another seed"]
    if yardstick:
        lines.append(f"| original, another seed | {len(yardstick)} pairs | — | — | — | — | "
                     f"{cell([r['l1'] for r in yardstick])} | {cell([r['iou'] for r in yardstick])} |")
    return "\n".join(lines)


def shuffled(study: Path) -> str:
    lines = ["| shuffled labels | classifier top-1 % | LE | OM | mask mean | box acc. (best thr.) | centred box LE |",
             "|---" * 7 + "|"]
    for seed, run in sorted(finished_seeds(study, "shuffled_labels").items()):
        found = results(run)
        casm = found["casm"]
        lines.append(f"| seed {seed} | {found['full_image']['acc_masked_in']:.1f} | {casm['le']:.3f} | "
                     f"{casm['om']:.3f} | {casm['mask_mean']:.3f} | {casm['sweep_box_accuracy']:.3f} | "
                     f"{found['centre_box']['le']:.3f} |")
    return "\n".join(lines)


def main(study: Path) -> None:
    report = study / "report"
    report.mkdir(parents=True, exist_ok=True)
    text = ("## casm under attack\n\n" + under_attack(study, report) +
            "\n\n## Data randomization (shuffled labels)\n\n" + shuffled(study) + "\n")
    (report / "sanity_tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/studies/sanity_under_attack"))
