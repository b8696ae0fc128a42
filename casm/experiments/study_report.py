"""A study's report: per variant and metric the mean ± sd over seeds, its Student-t 95 % interval, every
seed's value, and the paired difference to the reference variant on the same seeds; runs whose masks
failed the collapse check are marked wherever their numbers appear. Markdown, JSON, a plot and
TensorBoard scalars (``study/<metric>/<variant>`` at step = seed)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from casm.evaluation.ranking import NOT_RANKED, RANKED_METRICS
from casm.experiments.runs import Log, PlannedRun
from casm.experiments.statistics import LEVEL, Summary, paired_difference, summarize
from casm.metrics.collapse import read_collapse

# metric key -> (title, which way is better); keys not listed are shown by their key
TITLES = {
    "le": ("LE (localization error)", "lower"),
    "om": ("OM (LE or misclassified)", "lower"),
    "f1": ("F1 (continuous)", "higher"),
    "sweep_box_accuracy": ("box accuracy at the best threshold", "higher"),
    "mask_mean": ("mask mean (share of the image marked salient)", None),
    "acc_masked_out@judge": ("the judge's top-1 % on masked-out images", "lower"),
    "acc_inpainted@judge": ("the judge's top-1 % on masked-out images inpainted (Telea)", "lower"),
    "acc_masked_out": ("the run's own classifier's top-1 % on masked-out images", "lower"),
    "clean_top1": ("the run's own classifier, clean top-1 %", "higher"),
    "max_box_acc_v2_heldout": ("MaxBoxAccV2 % (thresholds chosen on the other half of the images)", "higher"),
    "pxap": ("PxAP % (pixel average precision)", "higher"),
    "energy_pointing_game": ("energy pointing game (map mass inside the boxes)", "higher"),
    "deletion": ("deletion (area under the curve)", "lower"),
    "insertion": ("insertion (area under the curve)", "higher"),
    "road": ("ROAD ((LeRF − MoRF) / 2)", "higher"),
}
PERCENT_METRICS = ("acc_", "clean_top1", "max_box_acc_v2", "pxap")  # key prefixes shown with one decimal
COLLAPSED_MARK = "†"
# an evaluation with other methods beside casm: each method over seeds in these metrics, with its mean rank
METHOD_COLUMNS = ("le", "max_box_acc_v2_heldout", "pxap", "deletion", "insertion", "road")
# ... and the study's judge on each method's binarized maps (key -> column title); "images" because the
# perturbation methods are judged on the first max_images_slow images only, the maps' mean because the
# binarized area follows it (a larger area removes more evidence, whatever the method)
JUDGED_COLUMNS = {"images": "images", "mask_mean": "share marked salient", "acc_masked_in@judge": "salient part kept ↑",
                  "acc_masked_out@judge": "salient part removed ↓",
                  "acc_inpainted@judge": "removed, then inpainted ↓"}


def metric_value(payload: dict, key: str) -> float | None:
    """``key`` of the masker in an evaluation's metrics.json (``clean_top1``: its own classifier's)."""
    if key == "clean_top1":
        return (payload.get("clean_top1") or {}).get("own")
    return payload["results"]["casm"].get(key)


def collect(cfg: DictConfig, runs: list[PlannedRun], reference: str) -> dict:
    """Every run's values, each variant's summaries and paired differences, the centred-box reference."""
    values: dict[str, dict[str, dict[int, float]]] = {}  # variant -> metric -> seed -> value
    collapsed: dict[str, dict[int, list[str]]] = {}
    methods: dict[str, dict[str, dict[str, dict[int, float]]]] = {}  # variant -> method -> metric -> seed -> value
    centre_box: list[float] = []
    for run in runs:
        variant, seed = run.tags["variant"], run.tags["seed"]
        payload = json.loads((run.run_dir / "eval" / "metrics.json").read_text())
        for key in cfg.metrics:
            value = metric_value(payload, key)
            if value is not None:
                values.setdefault(variant, {}).setdefault(key, {})[seed] = float(value)
        others = [m for m in payload["results"] if m not in NOT_RANKED]
        if len(others) > 1:  # every method's metrics and mean rank over the metrics they share
            by_method = methods.setdefault(variant, {})
            for method in others:
                row = by_method.setdefault(method, {})
                for key in ("mean_rank", *METHOD_COLUMNS, *JUDGED_COLUMNS):
                    value = payload.get("ranking", {}).get("mean_rank", {}).get(method) if key == "mean_rank" \
                        else payload["results"][method].get(key)
                    if value is not None:
                        row.setdefault(key, {})[seed] = float(value)
        reasons = read_collapse(run.run_dir)
        if reasons:
            collapsed.setdefault(variant, {})[seed] = reasons
        if "le" in payload["results"].get("centre_box", {}):
            centre_box.append(payload["results"]["centre_box"]["le"])
    out: dict = {"reference": reference, "seeds": list(cfg.seeds), "level": LEVEL, "variants": {},
                 "centre_box_le": centre_box[0] if centre_box else None}
    for variant in cfg.variants:
        metrics = values.get(variant, {})
        entry: dict = {"collapsed": {str(s): r for s, r in collapsed.get(variant, {}).items()}, "metrics": {}}
        for key, by_seed in metrics.items():
            seeds = sorted(by_seed)
            summary = summarize([by_seed[s] for s in seeds])
            paired = None
            if variant != reference and key in values.get(reference, {}):
                paired = paired_difference(by_seed, values[reference][key])
            entry["metrics"][key] = {"seeds": {str(s): by_seed[s] for s in seeds}, "summary": summary.as_dict(),
                                     "paired_difference": paired.as_dict() if paired else None}
        entry["methods"] = {method: {key: {"seeds": {str(s): v for s, v in sorted(by_seed.items())},
                                           "summary": summarize([v for _, v in sorted(by_seed.items())]).as_dict()}
                                     for key, by_seed in row.items()}
                            for method, row in methods.get(variant, {}).items()}
        out["variants"][variant] = entry
    return out


def methods_table(data: dict, variant: str) -> str:
    """Every method evaluated beside the masker, over the variant's seeds: its mean rank (over the metrics all
    methods share, per seed; docs/evaluation.md) and main metrics as mean ± sd, by mean rank."""
    return _method_rows(data, variant, ("mean_rank", *METHOD_COLUMNS), "Every method over seeds")


def judged_methods_table(data: dict, variant: str) -> str:
    """The study's judge on every method's masked images over the variant's seeds, in the same order as
    ``methods_table``: top-1 % with the masks' salient part kept, removed, and removed then inpainted."""
    rows = data["variants"][variant].get("methods") or {}
    if not any(k in r for r in rows.values() for k in JUDGED_COLUMNS if "@" in k):
        return ""
    return _method_rows(data, variant, tuple(JUDGED_COLUMNS), "Every method's masked images, the judge's top-1 %")


def _method_rows(data: dict, variant: str, keys: tuple[str, ...], title: str) -> str:
    rows = data["variants"][variant].get("methods") or {}
    columns = [k for k in keys if any(k in r for r in rows.values())]
    if not rows or not columns:
        return ""

    def cell(row: dict, key: str) -> str:
        if key not in row:
            return "—"
        s = Summary.from_dict(row[key]["summary"])
        if key == "images":
            return f"{s.mean:.0f}" if s.sd in (None, 0) else s.spread(0)
        return s.spread(2 if key == "mean_rank" else _digits(key))

    def header(key: str) -> str:
        if key in JUDGED_COLUMNS:
            return JUDGED_COLUMNS[key]
        return key.replace("_", " ") + (" ↓" if key == "mean_rank" or RANKED_METRICS.get(key) is False else " ↑")

    order = sorted(rows, key=lambda m: rows[m].get("mean_rank", {}).get("summary", {}).get("mean", float("inf")))
    lines = [f"### {title}: {variant} (mean ± sd over seeds {', '.join(map(str, data['seeds']))})",
             "", "| method | " + " | ".join(header(k) for k in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(cell(rows[m], k) for k in columns) + " |" for m in order]
    return "\n".join(lines)


def _digits(key: str) -> int:
    return 1 if key.startswith(PERCENT_METRICS) else 3


def _summary(d: dict | None) -> Summary | None:
    return None if d is None else Summary.from_dict(d)


def _interval(s: Summary | None, digits: int) -> str:
    if s is None:
        return "—"
    return "(one seed)" if s.sd is None else f"{s.low:.{digits}f} … {s.high:.{digits}f}"


def _sd_interval(s: Summary, digits: int) -> str:
    return "—" if s.sd_low is None else f"{s.sd_low:.{digits}f} … {s.sd_high:.{digits}f}"


def metric_table(data: dict, key: str) -> str:
    """One metric: a row per variant with its mean ± sd, interval, every seed, and the paired difference."""
    digits = _digits(key)
    title, better = TITLES.get(key, (key, None))
    seeds = data["seeds"]
    lines = [f"### {title}" + (f" ({better} is better)" if better else ""), "",
             f"| variant | mean ± sd | {data['level']:.0%} interval | the sd's {data['level']:.0%} interval | "
             + " | ".join(f"seed {s}" for s in seeds)
             + f" | − {data['reference']} (paired) | its {data['level']:.0%} interval |",
             "|---" * (len(seeds) + 6) + "|"]
    for variant, entry in data["variants"].items():
        m = entry["metrics"].get(key)
        if m is None:
            continue
        s, d = _summary(m["summary"]), _summary(m["paired_difference"])
        cells = []
        for seed in seeds:
            v = m["seeds"].get(str(seed))
            mark = COLLAPSED_MARK if str(seed) in entry["collapsed"] else ""
            cells.append("—" if v is None else f"{v:.{digits}f}{mark}")
        diff = "reference" if variant == data["reference"] else ("—" if d is None else d.spread(digits, signed=True))
        lines.append(f"| {variant} | {s.spread(digits)} | {_interval(s, digits)} | {_sd_interval(s, digits)} | "
                     + " | ".join(cells) + f" | {diff} | {_interval(d, digits) if d else ''} |")
    return "\n".join(lines)


def shown_metrics(data: dict, cfg: DictConfig) -> list[str]:
    """The study's metrics that some run's evaluation holds, in the study's order."""
    return [k for k in cfg.metrics if any(k in e["metrics"] for e in data["variants"].values())]


def markdown(data: dict, cfg: DictConfig) -> str:
    lines = [f"# Study {cfg.name}", "",
             f"{len(cfg.variants)} variant(s), seeds {list(cfg.seeds)}; intervals are Student-t {data['level']:.0%} "
             f"intervals of the mean over seeds (the sd's: chi-square); differences are paired by seed against "
             f"**{data['reference']}** (variant − reference)."]
    if data["centre_box_le"] is not None:
        lines.append(f"The centred box (a fixed map, no learning) scores LE {data['centre_box_le']:.3f} on these "
                     f"images: a masker that does not beat it has not localized anything.")
    failed = [f"{v} seed {s}: {'; '.join(r)}" for v, e in data["variants"].items() for s, r in e["collapsed"].items()]
    if failed:
        lines += ["", f"**{COLLAPSED_MARK} collapsed runs** (their masks failed the collapse check at the last "
                  f"validation; the means include them, so read those rows as failed, not as results):", ""]
        lines += [f"- {f}" for f in failed]
    for key in shown_metrics(data, cfg):
        lines += ["", metric_table(data, key)]
    for variant in data["variants"]:
        for table in (methods_table(data, variant), judged_methods_table(data, variant)):
            if table:
                lines += ["", table]
    return "\n".join(lines) + "\n"


def plot(data: dict, keys: list[str], path: Path) -> None:
    """Per metric: every seed's value as a point (collapsed runs as crosses), the mean and its interval."""
    import matplotlib  # deferred: matplotlib's import is slow and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(data["variants"])
    fig, axes = plt.subplots(1, len(keys), figsize=(1.2 + 1.3 * len(variants) * len(keys), 3.6), dpi=120,
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
        for x, variant in enumerate(variants):
            entry = data["variants"][variant]
            m = entry["metrics"].get(key)
            if m is None:
                continue
            for i, (seed, value) in enumerate(m["seeds"].items()):
                bad = seed in entry["collapsed"]
                ax.plot(x - 0.15 + 0.3 * i / max(1, len(m["seeds"]) - 1), value, "x" if bad else "o",
                        color="tab:red" if bad else "tab:blue", alpha=0.7, markersize=5)
            s = Summary.from_dict(m["summary"])
            ax.errorbar(x + 0.25, s.mean, yerr=s.error_bar(), fmt="s", color="black", capsize=4, markersize=5)
        if key == "le" and data["centre_box_le"] is not None:
            ax.axhline(data["centre_box_le"], color="grey", linestyle="--", linewidth=1, label="centred box")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(variants)), variants, rotation=30, fontsize=8)
        ax.set_title(TITLES.get(key, (key,))[0], fontsize=8)
    fig.suptitle(f"dots: seeds; squares: mean with its {data['level']:.0%} interval", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_study_report(out: Path, cfg: DictConfig, runs: list[PlannedRun], reference: str, log: Log) -> Path:
    """Write study.md, study.json, study.png and tensorboard/ to ``out``; print the LE table; returns ``out``."""
    from torch.utils.tensorboard import SummaryWriter  # deferred: TensorBoard's import is slow

    out.mkdir(parents=True, exist_ok=True)
    data = collect(cfg, runs, reference)
    data["study"] = OmegaConf.to_container(cfg, resolve=True)
    (out / "study.json").write_text(json.dumps(data, indent=2))
    (out / "study.md").write_text(markdown(data, cfg))
    keys = shown_metrics(data, cfg)
    if keys:
        plot(data, [k for k in keys if k in ("le", "acc_masked_out@judge")] or keys[:1], out / "study.png")
    writer = SummaryWriter(str(out / "tensorboard"))
    for variant, entry in data["variants"].items():
        for key, m in entry["metrics"].items():
            for seed, value in m["seeds"].items():
                writer.add_scalar(f"study/{key}/{variant}", value, int(seed))
    writer.close()
    if "le" in keys:
        log(metric_table(data, "le"))
    return out
