"""The tables of examples/sanity_study.sh: python examples/sanity_table.py [OUT]   (default runs/sanity)

casm under attack: per variant (the masker's classifier: original, T1..T4) mean +- sd over seeds of the
evaluation's LE, OM, mask mean and masked-out accuracy, and how far its masks are from the masks of the
masker trained against the original classifier with the same seed (L1, IoU of the regions > 0.5) --
next to the seed-to-seed distance of the original's maskers. Data randomization: the shuffled-label runs
against the default run and the centred box. Writes OUT/sanity_tables.md and OUT/masks_under_attack.png.
"""

import json
import statistics
import sys
from pathlib import Path

from casm.data.transforms import denormalize
from casm.experiments.statistics import summarize
from casm.sanity.attacks import attack_grid
from casm.sanity.report import validation_images
from casm.sanity.under_attack import compare_to_reference, masks_of


def cell(values: list[float]) -> str:
    """mean ± sd over the seeds (one decimal for percentages)."""
    s = summarize(values)
    digits = 3 if abs(values[0]) < 2 else 1
    return f"{s.mean:.{digits}f} ± {s.sd or 0:.{digits}f}"

VARIANTS = ("original", "T1", "T2", "T3", "T4")
IMAGES = 500  # the whole validation split of the built-in data


def results(out: Path, name: str) -> dict | None:
    path = out / name / "eval" / "metrics.json"
    return json.loads(path.read_text())["results"] if path.is_file() else None


def seeds_of(out: Path, variant: str) -> list[int]:
    return sorted(int(p.name.rsplit("_s", 1)[1]) for p in out.glob(f"{variant}_s*")
                  if (p / "eval" / "metrics.json").is_file())


def checkpoint(out: Path, name: str) -> Path:
    return out / name / "version_0" / "checkpoints" / "last.ckpt"


def under_attack(out: Path) -> str:
    from casm.trained_run import read_run

    seeds = {v: seeds_of(out, v) for v in VARIANTS}
    if not seeds["original"]:
        return "(no finished run against the original classifier)"
    images, _ = validation_images(read_run(checkpoint(out, "original_s0")).config, IMAGES)
    masks = {v: {s: masks_of(checkpoint(out, f"{v}_s{s}"), images) for s in seeds[v]} for v in VARIANTS if seeds[v]}
    attack_grid({"image": images, **{v: masks[v][0] for v in masks if 0 in masks[v]}},
                out / "masks_under_attack.png", rows=4, denormalize=denormalize)
    agreement = compare_to_reference(masks)
    lines = ["| masker trained against | seeds | LE | OM | mask mean | own masked-out % | judge masked-out % | "
             "mask L1 to the original's (same seed) | IoU (mask > 0.5) |", "|---" * 9 + "|"]
    for variant in VARIANTS:
        runs = [results(out, f"{variant}_s{s}")["casm"] for s in seeds[variant]]
        if not runs:
            continue
        numbers = [cell([r[k] for r in runs]) for k in ("le", "om", "mask_mean", "acc_masked_out",
                                                       "acc_masked_out@judge")]
        rows = agreement.get(variant, [])
        distance = [cell([r["l1"] for r in rows]), cell([r["iou"] for r in rows])] if rows else ["—", "—"]
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(numbers + distance) + " |")
    yardstick = agreement["original, another seed"]
    if yardstick:
        lines.append("| original, another seed | " + f"{len(yardstick)} pairs | — | — | — | — | — | "
                     f"{cell([r['l1'] for r in yardstick])} | {cell([r['iou'] for r in yardstick])} |")
    return "\n".join(lines)


def shuffled(out: Path) -> str:
    lines = ["| run | seeds | classifier top-1 % | LE | OM | mask mean | centred box LE |", "|---" * 7 + "|"]
    for label, prefix in (("default (true labels)", "default"), ("shuffled labels", "shuffled")):
        found = [results(out, f"{prefix}_s{s}") for s in seeds_of(out, prefix)]
        if not found:
            continue
        numbers = [cell([r["full_image"]["acc_masked_in"] for r in found])]
        numbers += [cell([r["casm"][k] for r in found]) for k in ("le", "om", "mask_mean")]
        numbers.append(f"{statistics.mean(r['centre_box']['le'] for r in found):.3f}")
        lines.append(f"| {label} | {len(found)} | " + " | ".join(numbers) + " |")
    return "\n".join(lines)


def main(out: Path) -> None:
    text = ("## casm under attack\n\n" + under_attack(out) + "\n\n## Data randomization (shuffled labels)\n\n"
            + shuffled(out) + "\n")
    (out / "sanity_tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/sanity"))
