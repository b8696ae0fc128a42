"""The sanity checks over several trained runs (seeds of one config): each run's own report
(casm.sanity.report, in RUN/sanity), then every number as mean ± sd over the runs.

One classifier's attack and randomization figures are an anecdote like any other single run: the
cascading randomization in particular moves from seed to seed (a stage's similarity can sit just above
or just below the method's chance level). So the verdict of the randomization test is counted per run:
a stage "stays above chance" in a run when its Spearman correlation with the trained model's maps
exceeds that run's own chance level (the similarity of two different images' maps).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from casm.checkpoints import run_folder
from casm.errors import UserError
from casm.experiments.statistics import Summary, summarize
from casm.models.manipulation import ATTACKS
from casm.sanity.report import sanity_report


def summarize_sanity(reports: list[dict]) -> dict:
    """Per attack and method the L1 distances, per method and cascade stage the similarities, each as a
    :class:`Summary` dict over ``reports`` (sanity.json contents of runs measured with the same settings),
    and per stage how many runs stay above their chance level."""
    if len(reports) < 2:
        raise UserError("a summary over runs needs at least two sanity reports")
    attacks = [[r["attack"] for r in report["attacks"]] for report in reports]
    if any(a != attacks[0] for a in attacks):
        raise UserError(f"the runs' sanity reports measured different attacks: {attacks}")

    def over(values: list[float]) -> dict:
        return summarize(values).as_dict()

    summary: dict = {"runs": [r["checkpoint"] for r in reports], "images": [r["images"] for r in reports],
                     "attacks": []}
    for i, name in enumerate(attacks[0]):
        rows = [report["attacks"][i] for report in reports]
        summary["attacks"].append({
            "attack": name,
            "accuracy_before": over([r["accuracy_before"] for r in rows]),
            "accuracy_after": over([r["accuracy_after"] for r in rows]),
            "max_logit_change": max(r["max_logit_change"] for r in rows),
            "methods": {m: {key: over([r["methods"][m][key] for r in rows])
                            for key in ("l1_to_target", "l1_original_to_target")}
                        for m in rows[0]["methods"]}})
    if all("randomization" in r for r in reports):
        summary["randomization"], summary["randomization_chance"] = {}, {}
        for method, first in reports[0]["randomization"].items():
            stages = [[row["stage"] for row in r["randomization"][method]] for r in reports]
            if any(s != stages[0] for s in stages):
                raise UserError(f"the runs' {method} cascades re-initialize different stages ({stages}): "
                                f"a summary over runs needs runs of one architecture")
            chance = [r["randomization_chance"][method] for r in reports]
            summary["randomization_chance"][method] = {k: over([c[k] for c in chance]) for k in ("spearman", "ssim")}
            summary["randomization"][method] = [
                {"stage": row["stage"],
                 **{k: over([r["randomization"][method][j][k] for r in reports]) for k in ("spearman", "ssim")},
                 "above_chance": sum(r["randomization"][method][j]["spearman"] > c["spearman"]
                                     for r, c in zip(reports, chance))}
                for j, row in enumerate(first)]
    return summary


def _cell(d: dict, digits: int = 3) -> str:
    return Summary.from_dict(d).spread(digits)


def summary_tables(summary: dict) -> str:
    """Markdown: the attack table and the cascade table of casm.sanity.report, as mean ± sd over the runs."""
    n = len(summary["runs"])
    methods = list(summary["attacks"][0]["methods"]) if summary["attacks"] else []
    lines = [f"# Manipulation attacks ({n} runs, mean ± sd)", "",
             "| attack | top-1 before → after | largest logit change (any run) | " +
             " | ".join(f"{m} L1 to target (original's)" for m in methods) + " |", "|---" * (3 + len(methods)) + "|"]
    for r in summary["attacks"]:
        cells = [f"{_cell(r['methods'][m]['l1_to_target'])} ({_cell(r['methods'][m]['l1_original_to_target'])})"
                 for m in methods]
        lines.append(f"| {r['attack']} | {_cell(r['accuracy_before'])} → {_cell(r['accuracy_after'])} | "
                     f"{r['max_logit_change']:.2g} | " + " | ".join(cells) + " |")
    if "randomization" in summary:
        stages = max(len(rows) for rows in summary["randomization"].values())
        lines += ["", f"# Cascading randomization ({n} runs; Spearman / SSIM with the trained model's maps, "
                  "mean ± sd; runs whose Spearman stays above their own chance level)", "",
                  "| method | another image's map (chance) | " +
                  " | ".join(f"{k} stage(s)" for k in range(1, stages + 1)) + " |", "|---" * (stages + 2) + "|"]
        for method, rows in summary["randomization"].items():
            chance = summary["randomization_chance"][method]
            lines.append(f"| {method} | {_cell(chance['spearman'], 2)} / {_cell(chance['ssim'], 2)} | " + " | ".join(
                f"{r['stage']}: {_cell(r['spearman'], 2)} / {_cell(r['ssim'], 2)}, {r['above_chance']}/{n} above"
                for r in rows) + " |")
    return "\n".join(lines) + "\n"


def sanity_over_runs(checkpoints: list[str | Path], out: str | Path | None = None, images: int = 64,
                     slow_images: int = 8, attacks: tuple[str, ...] = ATTACKS, device: str = "cpu",
                     randomization: bool = True) -> tuple[dict, Path]:
    """Each checkpoint's sanity report (its RUN/sanity), then the summary over them:
    ``sanity_over_runs.json`` and ``sanity_over_runs.md`` in ``out`` (default: the runs' common parent
    folder / sanity_over_runs)."""
    missing = [str(c) for c in checkpoints if not Path(c).is_file()]
    if missing:  # before the first run's minutes are spent
        raise UserError(f"no such checkpoint: {', '.join(missing)}")
    runs = [run_folder(c).resolve() for c in checkpoints]
    twice = sorted({str(r) for r in runs if runs.count(r) > 1})
    if twice:
        raise UserError(f"two checkpoints of the same run ({', '.join(twice)}): each run's report goes to its "
                        f"RUN/sanity, so give one checkpoint per run")
    reports, folders = [], []
    for checkpoint in checkpoints:
        report, folder = sanity_report(checkpoint, None, images, slow_images, attacks, device, randomization)
        reports.append(report)
        folders.append(folder)
    summary = summarize_sanity(reports)
    summary["reports"] = [str(f) for f in folders]
    out = Path(out) if out else Path(os.path.commonpath(runs)) / "sanity_over_runs"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sanity_over_runs.json").write_text(json.dumps(summary, indent=1))
    (out / "sanity_over_runs.md").write_text(summary_tables(summary))
    return summary, out
