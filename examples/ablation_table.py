"""Mean +- sd over seeds of an ablation's evaluations: python examples/ablation_table.py OUT VARIANT ...
(reads OUT/VARIANT_sS/eval/metrics.json for every seed S found)."""

import json
import statistics
import sys
from pathlib import Path

COLUMNS = {  # column -> (key in results["casm"], scale)
    "LE": ("le", 1), "OM": ("om", 1), "box acc (best thr.)": ("sweep_box_accuracy", 1), "F1": ("f1", 1),
    "mask mean": ("mask_mean", 1), "judge masked-out %": ("acc_masked_out@judge", 1),
    "judge inpainted %": ("acc_inpainted@judge", 1), "own masked-out %": ("acc_masked_out", 1),
}


def cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}" if abs(values[0]) < 2 else \
        f"{statistics.mean(values):.1f} ± {spread:.1f}"


def main(out: Path, variants: list[str]) -> None:
    print("| variant | seeds | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for variant in variants:
        files = sorted(out.glob(f"{variant}_s*/eval/metrics.json"))
        runs = [json.loads(p.read_text())["results"]["casm"] for p in files]
        if not runs:
            continue
        cells = [cell([r[key] * scale for r in runs]) if all(key in r for r in runs) else "—"
                 for key, scale in COLUMNS.values()]
        print(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
