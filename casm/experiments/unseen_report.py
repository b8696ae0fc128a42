"""The unseen-class report: the CASM paper's Table 3 (rows: training sets; columns: each subset's
score, then seen, unseen and the gap) for every metric that means something on unseen classes, the
centred-box reference as a row, a plot of seen and unseen LE against the fraction of classes seen,
``metrics.json`` and TensorBoard scalars.

"Seen" and "unseen" pool the images of the seen (unseen) subsets, so a subset weighs by its number
of validation images, as if the subsets' images had been scored together. LE is a share of images, so
its sampling error is binomial: the report gives ``sqrt(p (1 - p) / n)`` for seen and unseen and their
root sum of squares for the gap. It measures the finite validation set, not the spread over training
seeds. With ``unseen.seeds`` every training set is trained once per seed, and "Over seeds" gives each
set's seen and unseen score and gap as a mean with its Student-t 95 % interval over seeds, and each
set's gap minus the first set's gap, paired by seed (does the gap grow when fewer classes are seen?).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig

from casm.data.splits import ClassSplit
from casm.data.synthetic import missing_cues
from casm.experiments.statistics import LEVEL, Summary, paired_difference, summarize
from casm.metrics.collapse import read_collapse

# (key in an evaluation's results, title, lower is better, what each image counts in)
METRICS = [
    ("le", "LE", True, "images"),
    ("om", "OM (seen classes only: the classifier cannot be right on a class it never saw)", True, "images_seen"),
    ("f1", "F1 (continuous)", False, "images"),
    ("sweep_box_accuracy", "box accuracy at the best threshold", False, "images"),
    ("energy_pointing_game", "energy pointing game", False, "images"),
    ("acc_masked_out@{judge}", "masked-out top-1 % of the judge (a classifier trained on every class)", True,
     "images"),
]


def _read(run_dir: Path, subset: str) -> dict:
    path = run_dir / "eval" / subset / "metrics.json"
    payload = json.loads(path.read_text())
    return {"casm": payload["results"]["casm"], "centre_box": payload["results"].get("centre_box", {}),
            "clean_top1": payload.get("clean_top1", {}).get("own")}


def pooled(cells: dict[str, dict], key: str, weight: str, seen: bool) -> float | None:
    """Image-weighted mean of ``key`` over the subsets that are (not) ``seen``; None if none has it."""
    pairs = [(c[key], c[weight]) for c in cells.values() if c["seen"] == seen and key in c and c.get(weight)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def standard_error(share: float | None, images: int) -> float | None:
    """Binomial standard error of a share of ``images`` images."""
    return None if share is None or images == 0 else math.sqrt(share * (1 - share) / images)


def collect(split: ClassSplit, runs: list, judge: str | None) -> dict:
    """Every run's casm scores per subset, seen and unseen pooled, and the centred-box reference."""
    total_classes = sum(len(c) for c in split.subsets.values())
    out: dict = {"subsets": {n: len(c) for n, c in split.subsets.items()}, "runs": {}, "reference": {}}
    keys = [(k.format(judge=judge), w) for k, _, _, w in METRICS if judge or "{judge}" not in k]
    for run in runs:
        cells = {}
        for subset in split.names:
            scores = _read(run.run_dir, subset)
            seen = subset in run.subsets
            cells[subset] = dict(scores["casm"], seen=seen)
            if seen and scores["clean_top1"] is not None:  # a classifier's top-1 exists on its own classes only
                cells[subset]["clean_top1"] = scores["clean_top1"]
            if subset not in out["reference"]:
                out["reference"][subset] = dict(scores["centre_box"], seen=False)
        seen_classes = sum(len(split.subsets[s]) for s in run.subsets)
        entry = {"trained_on": run.subsets, "fraction_seen": seen_classes / total_classes,
                 "collapsed": read_collapse(run.run_dir),
                 "samples_per_class": run.config.data.samples_per_class, "subsets": cells,
                 "clean_top1": pooled(cells, "clean_top1", "images", True)}
        for key, weight in keys:
            entry[key] = {"seen": pooled(cells, key, weight, True), "unseen": pooled(cells, key, weight, False)}
            if entry[key]["seen"] is not None and entry[key]["unseen"] is not None:
                entry[key]["gap"] = entry[key]["unseen"] - entry[key]["seen"]
        le = entry["le"]
        for which, is_seen in (("seen", True), ("unseen", False)):
            images = sum(c["images"] for c in cells.values() if c["seen"] == is_seen)
            le[f"{which}_se"] = standard_error(le[which], images)
        if le.get("gap") is not None:
            le["gap_se"] = math.hypot(le["seen_se"], le["unseen_se"])
        entry.update(set=run.tags.get("set", run.label), seed=run.tags.get("seed"))
        out["runs"][run.label] = entry
    out["over_seeds"] = over_seeds(out["runs"], [k for k, _ in keys])
    ref = out["reference"]
    out["reference_le"] = pooled(ref, "le", "images", False)
    return out


def over_seeds(runs: dict, keys: list[str]) -> dict:
    """Per training set: seen, unseen and gap of each metric summarized over its seeds, and its gap minus
    the first set's gap paired by seed."""
    sets: dict[str, list[dict]] = {}
    for entry in runs.values():
        sets.setdefault(entry["set"], []).append(entry)
    first = next(iter(sets), None)
    out = {}
    for name, entries in sets.items():
        row = {"seeds": [e["seed"] for e in entries], "fraction_seen": entries[0]["fraction_seen"],
               "samples_per_class": entries[0]["samples_per_class"],
               "collapsed_seeds": [e["seed"] for e in entries if e["collapsed"]]}
        for key in keys:
            row[key] = {which: summarize([e[key][which] for e in entries]).as_dict()
                        for which in ("seen", "unseen", "gap") if all(e[key].get(which) is not None for e in entries)}
            if name != first and "gap" in row[key]:
                mine = {e["seed"]: e[key]["gap"] for e in entries}
                theirs = {e["seed"]: e[key].get("gap") for e in sets[first] if e[key].get("gap") is not None}
                paired = paired_difference(mine, theirs)
                row[key]["gap_minus_first"] = paired.as_dict() if paired else None
        out[name] = row
    return out


def _cell(summary: dict | None, digits: int = 3, signed: bool = False) -> str:
    if not summary:
        return "—"
    s = Summary.from_dict(summary)
    return f"{s.mean:{'+' if signed else ''}.{digits}f}" if s.sd is None else s.text(digits, signed)


def seeds_table(data: dict, key: str) -> str:
    """Each training set over its seeds: mean ± sd [95 % interval] of seen, unseen, the gap, and the gap
    minus the first set's (paired by seed)."""
    sets = data["over_seeds"]
    first = next(iter(sets), "")
    head = ["training set", "classes seen", "seeds", "seen", "unseen", "gap (unseen − seen)", f"gap − {first}'s gap"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    digits = 1 if key.startswith("acc_") else 3
    for name, row in sets.items():
        m = row.get(key, {})
        seeds = ", ".join(f"{s}{' (collapsed)' if s in row['collapsed_seeds'] else ''}" for s in row["seeds"])
        diff = "—" if name == first else _cell(m.get("gap_minus_first"), digits, signed=True)
        lines.append(f"| {name} | {100 * row['fraction_seen']:.0f} % | {seeds} | {_cell(m.get('seen'), digits)} | "
                     f"{_cell(m.get('unseen'), digits)} | {_cell(m.get('gap'), digits, signed=True)} | {diff} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if key.startswith("acc_") else f"{value:.3f}"


def table(data: dict, key: str, names: list[str]) -> str:
    """One metric as the paper's Table 3: unseen subsets' cells in italics."""
    head = ["training set", "classes seen", *names, "seen", "unseen", "gap (unseen − seen)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label, run in data["runs"].items():
        cells = []
        for n in names:
            cell = run["subsets"][n]
            text = _fmt(cell.get(key), key)
            cells.append(text if cell["seen"] or text == "—" else f"*{text}*")
        summary = run.get(key, {})
        gap = summary.get("gap")

        def with_se(which: str, text: str) -> str:
            se = summary.get(f"{which}_se")
            return text if se is None or text == "—" else f"{text} ± {se:.3f}"

        gap_text = "—" if gap is None else f"{gap:+.3f}" if not key.startswith("acc_") else f"{gap:+.1f}"
        title = f"{label} **(collapsed)**" if run.get("collapsed") else label
        lines.append(f"| {title} | {100 * run['fraction_seen']:.0f} % | " + " | ".join(cells) +
                     f" | {with_se('seen', _fmt(summary.get('seen'), key))} | "
                     f"{with_se('unseen', _fmt(summary.get('unseen'), key))} | {with_se('gap', gap_text)} |")
    if key == "le":
        ref = data["reference"]
        lines.append("| centred box (reference) | — | " + " | ".join(_fmt(ref[n].get("le"), key) for n in names) +
                     f" | {_fmt(data['reference_le'], key)} | {_fmt(data['reference_le'], key)} | — |")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    """Seen and unseen LE against the fraction of classes seen: each set's mean over its seeds with its
    interval (the centred box as a dotted line)."""
    import matplotlib  # deferred: matplotlib's import is slow and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def point(summary: dict) -> tuple[float, list[list[float]] | None]:
        s = Summary.from_dict(summary)
        return s.mean, s.error_bar()

    rows = [r for r in data["over_seeds"].values() if "seen" in r["le"] and "unseen" in r["le"]]
    full = sorted((r for r in rows if not r["samples_per_class"]), key=lambda r: r["fraction_seen"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for which, style, shift in (("seen", "o-", -0.6), ("unseen", "s--", 0.6)):
        xs = [100 * r["fraction_seen"] + shift for r in full]
        means, errors = zip(*(point(r["le"][which]) for r in full)) if full else ((), ())
        line = ax.plot(xs, means, style, label=f"{which} classes")[0]
        for x, mean, err in zip(xs, means, errors):
            if err is not None:
                ax.errorbar(x, mean, yerr=err, color=line.get_color(), capsize=3)
    for r in rows:
        if r["samples_per_class"]:
            for which, marker in (("seen", "^"), ("unseen", "v")):
                mean, err = point(r["le"][which])
                ax.errorbar(100 * r["fraction_seen"], mean, yerr=err, fmt=marker, color="grey", capsize=3,
                            label=f"{which}, {r['samples_per_class']} images / class")
    if data["reference_le"] is not None:
        ax.axhline(data["reference_le"], color="black", linestyle=":", linewidth=1, label="centred box")
    ax.set_xlabel("classes seen in training (%)")
    ax.set_ylabel("localization error (lower is better)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_unseen_report(out: Path, split: ClassSplit, runs: list, data_cfg: DictConfig, judge: str | None) -> Path:
    """Write unseen.md, unseen.png, metrics.json and tensorboard/ to ``out``; returns ``out``."""
    from torch.utils.tensorboard import SummaryWriter  # deferred: TensorBoard's import is slow

    out.mkdir(parents=True, exist_ok=True)
    data = collect(split, runs, judge)
    names = split.names
    parts = ["# Unseen-class experiment\n",
             f"Split {split.path}: " + ", ".join(f"{n} {len(c)}" for n, c in split.subsets.items()) +
             " classes. Cells of subsets a model never saw are in *italics*; seen and unseen pool the images "
             "of those subsets; ± is the binomial standard error over validation images (one model per row, "
             "not a spread over training seeds).\n"]
    collapsed = {label: run["collapsed"] for label, run in data["runs"].items() if run["collapsed"]}
    if collapsed:
        parts.append("**Collapsed runs** (marked in every table): their masks failed the collapse check at the last "
                     "validation, so their numbers are not results:\n\n" + "\n".join(
                         f"- {label}: {'; '.join(reasons)}" for label, reasons in collapsed.items()) + "\n")
    if any(len(row["seeds"]) > 1 for row in data["over_seeds"].values()):
        parts.append(f"## Over seeds\n\nmean ± sd [Student-t {LEVEL:.0%} interval] over each set's seeds; the last "
                     "column pairs each seed's gap with the same seed's gap of the first set. Every seed's own "
                     "numbers are in the tables below.\n")
        for key, title, lower, _ in METRICS:
            key = key.format(judge=judge)
            if key in ("le", f"acc_masked_out@{judge}"):
                parts.append(f"### {title} ({'lower' if lower else 'higher'} is better)\n\n{seeds_table(data, key)}")
    parts.append("Classifier top-1 on the validation images of its own classes: " + ", ".join(
        f"{label} {_fmt(run['clean_top1'], 'acc_')} %" for label, run in data["runs"].items()) + ".\n")
    for key, title, lower, _ in METRICS:
        if "{judge}" in key and not judge:
            continue
        key = key.format(judge=judge)
        parts.append(f"## {title} ({'lower' if lower else 'higher'} is better)\n\n{table(data, key, names)}")
    if data_cfg.name == "synthetic":
        lines = []
        for run in runs:
            seen_classes = split.classes_of(run.subsets, [c for s in names for c in split.subsets[s]])
            missing = {k: v for k, v in missing_cues(seen_classes, data_cfg.synthetic_classes).items() if v}
            lines.append(f"- {run.label}: " + ("every shape, texture and part was seen in training" if not missing
                                               else "never saw " + "; ".join(f"{k} {', '.join(v)}"
                                                                             for k, v in missing.items())))
        parts.append("## What the unseen classes share with the seen ones\n\n" + "\n".join(lines) + "\n")
    (out / "unseen.md").write_text("\n".join(parts))
    (out / "metrics.json").write_text(json.dumps(data, indent=1))
    plot(data, out / "unseen.png")
    writer = SummaryWriter(str(out / "tensorboard"))
    for label, run in data["runs"].items():
        step = round(100 * run["fraction_seen"])
        for key, _, _, _ in METRICS:
            key = key.format(judge=judge)
            for which in ("seen", "unseen"):
                value = run.get(key, {}).get(which)
                if value is not None:
                    tag = f"unseen/{key}/{which}" + (f"_{run['samples_per_class']}_per_class"
                                                     if run["samples_per_class"] else "")
                    writer.add_scalar(tag, value, step)
    writer.close()
    return out
