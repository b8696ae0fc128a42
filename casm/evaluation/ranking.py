"""Methods ranked per metric, a mean rank over metrics, and where the metrics disagree (docs/evaluation.md).

Saliency metrics often order the same methods differently (LATEC, NeurIPS 2024): one number per
method hides that. The ranking is over the explaining methods only (the toy references are yardsticks,
not contestants) and over the metrics every ranked method has, so a mean rank compares like with like.
"""

from __future__ import annotations

import math
from itertools import combinations

from scipy.stats import kendalltau, rankdata

# metric -> True if higher is better; the order is the report's
RANKED_METRICS = {
    "le": False, "om": False, "f1": True, "sweep_box_accuracy": True, "max_box_acc_v2": True,
    "max_box_acc_v2_heldout": True, "pxap": True, "pointing_game": True, "energy_pointing_game": True,
    "deletion": False, "insertion": True, "road": True, "average_drop": False, "increase_in_confidence": True,
    "acc_masked_out": False,
}
NOT_RANKED = ("full_image", "centre_box")
CONVENTIONS = {  # written to metrics.json beside the metrics'
    "ranking": "per metric the explaining methods (not full_image, centre_box) ranked 1 = best, ties sharing their "
               "mean rank, over the metrics every ranked method has; mean_rank = the mean over those metrics; each "
               "method's metrics on the images it was scored on (Score-CAM, Ablation-CAM, RISE: the first "
               "max_images_slow); disagreements: metric pairs with Kendall tau < 0 over the methods",
}


def rank_methods(results: dict[str, dict[str, float]]) -> dict:
    """``{"metrics", "ranks" {method: {metric: rank}}, "mean_rank" {method: r}, "best" {metric: [methods]},
    "disagreements" [(metric, metric, Kendall tau)]}``; rank 1 is best, ties share their mean rank. A pair
    of metrics disagrees when its Kendall tau over the methods is negative (they order them oppositely)."""
    methods = [m for m in results if m not in NOT_RANKED]
    metrics = [k for k in RANKED_METRICS
               if methods and all(math.isfinite(results[m].get(k, math.nan)) for m in methods)]
    ranks: dict[str, dict[str, float]] = {m: {} for m in methods}
    best: dict[str, list[str]] = {}
    for metric in metrics:
        sign = -1.0 if RANKED_METRICS[metric] else 1.0
        order = rankdata([sign * results[m][metric] for m in methods], method="average")
        for method, r in zip(methods, order):
            ranks[method][metric] = float(r)
        best[metric] = [m for m, r in zip(methods, order) if r == order.min()]
    mean_rank = {m: sum(ranks[m].values()) / len(metrics) for m in methods} if metrics else {}
    disagreements = []
    if len(methods) >= 3:
        for a, b in combinations(metrics, 2):
            tau = kendalltau([ranks[m][a] for m in methods], [ranks[m][b] for m in methods]).statistic
            if math.isfinite(tau) and tau < 0:
                disagreements.append((a, b, round(float(tau), 3)))
    return {"metrics": metrics, "ranks": ranks, "mean_rank": mean_rank, "best": best,
            "disagreements": disagreements}


def ranking_markdown(ranking: dict) -> str:
    """The ranking as Markdown: methods by mean rank with each metric's rank, then the disagreements."""
    metrics, mean_rank = ranking["metrics"], ranking["mean_rank"]
    if not metrics or len(mean_rank) < 2:
        return ""
    lines = ["### Ranking (1 = best; ties share their mean rank)", "",
             "| method | mean rank | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for method in sorted(mean_rank, key=mean_rank.get):
        cells = [f"{ranking['ranks'][method][k]:g}" for k in metrics]
        lines.append(f"| {method} | {mean_rank[method]:.2f} | " + " | ".join(cells) + " |")
    if ranking["disagreements"]:
        pairs = ", ".join(f"{a} vs {b} (τ {tau:+.2f})" for a, b, tau in ranking["disagreements"])
        lines += ["", f"Metrics that order the methods oppositely (Kendall τ < 0): {pairs}."]
    else:
        lines += ["", "No two metrics order the methods oppositely (every Kendall τ ≥ 0)."]
    return "\n".join(lines) + "\n"
