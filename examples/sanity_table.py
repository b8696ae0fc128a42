"""The sanity study's mask comparison: python examples/sanity_table.py [STUDY.yaml]
(default configs/studies/sanity_under_attack.yaml, after
``python -m casm experiment study --config configs/studies/sanity_under_attack.yaml``; the runs are found
where the study command put them).

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

from casm.cli import reports_user_errors
from casm.data.transforms import denormalize
from casm.experiments.runs import PlannedRun
from casm.experiments.statistics import summarize
from casm.experiments.study import Study, load_study
from casm.metrics.collapse import read_collapse
from casm.sanity.attacks import attack_grid
from casm.sanity.report import validation_images
from casm.sanity.under_attack import compare_to_reference, masks_of

VARIANTS = ("original", "T1", "T2", "T3", "T4")
IMAGES = 500  # the whole validation split of the built-in data


def cell(values: list[float]) -> str:
    """mean ± sd over the seeds (one decimal for percentages)."""
    s = summarize(values)
    digits = 3 if abs(values[0]) < 2 else 1
    return f"{s.mean:.{digits}f} ± {s.sd or 0:.{digits}f}"


def evaluated(study: Study) -> dict[str, dict[int, PlannedRun]]:
    """variant -> seed -> run, for the study's runs whose evaluation exists."""
    found: dict[str, dict[int, PlannedRun]] = {}
    for run in study.plan():
        if "seed" in run.tags and (run.run_dir / "eval" / "metrics.json").is_file():
            found.setdefault(run.tags["variant"], {})[run.tags["seed"]] = run
    return found


def results(run: PlannedRun) -> dict:
    return json.loads((run.run_dir / "eval" / "metrics.json").read_text())["results"]


def under_attack(found: dict[str, dict[int, PlannedRun]], report: Path) -> str:
    runs = {v: found.get(v, {}) for v in VARIANTS}
    if not runs["original"]:
        return "(no finished run against the original classifier)"
    first = next(iter(runs["original"].values()))
    images, _ = validation_images(first.read().config, IMAGES)
    masks = {v: {seed: masks_of(run.checkpoint, images) for seed, run in by_seed.items()}
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
        collapsed = [str(seed) for seed, run in sorted(runs[variant].items()) if read_collapse(run.run_dir)]
        seeds = f"{len(scores)}" + (f" (seed {', '.join(collapsed)} collapsed †)" if collapsed else "")
        lines.append(f"| {variant} | {seeds} | " + " | ".join(numbers + distance) + " |")
    yardstick = agreement["original, another seed"]
    if yardstick:
        lines.append(f"| original, another seed | {len(yardstick)} pairs | — | — | — | — | "
                     f"{cell([r['l1'] for r in yardstick])} | {cell([r['iou'] for r in yardstick])} |")
    return "\n".join(lines)


def shuffled(found: dict[str, dict[int, PlannedRun]]) -> str:
    lines = ["| shuffled labels | classifier top-1 % | LE | OM | mask mean | box acc. (best thr.) | centred box LE | "
             "collapse check (last epoch) |", "|---" * 8 + "|"]
    for seed, run in sorted(found.get("shuffled_labels", {}).items()):
        scores = results(run)
        casm = scores["casm"]
        lines.append(f"| seed {seed} | {scores['full_image']['acc_masked_in']:.1f} | {casm['le']:.3f} | "
                     f"{casm['om']:.3f} | {casm['mask_mean']:.3f} | {casm['sweep_box_accuracy']:.3f} | "
                     f"{scores['centre_box']['le']:.3f} | {'; '.join(read_collapse(run.run_dir)) or 'passed'} |")
    return "\n".join(lines)


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    study = Study(*load_study(argv[0] if argv else "configs/studies/sanity_under_attack.yaml"))
    found = evaluated(study)
    report = study.root / "report"
    report.mkdir(parents=True, exist_ok=True)
    text = ("## casm under attack\n\n" + under_attack(found, report) +
            "\n\n## Data randomization (shuffled labels)\n\n" + shuffled(found) + "\n")
    (report / "sanity_tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
