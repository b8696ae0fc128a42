"""Every variant's masks side by side: python examples/study_masks.py STUDY.yaml [--seed 0] [--rows 4]

After ``python -m casm experiment study --config STUDY.yaml``: each variant's masker of one seed on the
same first validation images, one column per variant (the study report's plots give the numbers over
seeds; this shows what the masks look like). Writes STUDY/report/masks_seed<k>.png.
"""

import argparse
import sys

from casm.cli import reports_user_errors
from casm.data.transforms import denormalize
from casm.errors import UserError
from casm.experiments.study import Study, load_study
from casm.sanity.attacks import attack_grid
from casm.sanity.report import validation_images
from casm.sanity.under_attack import masks_of


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="study_masks.py", description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=4, help="images (default 4)")
    args = parser.parse_args(argv)
    study = Study(*load_study(args.study))
    runs = {run.tags["variant"]: run for run in study.plan()
            if run.tags.get("seed") == args.seed and run.checkpoint.is_file()}
    if not runs:
        raise UserError(f"{args.study}: no trained run of seed {args.seed} yet (run the study first)")
    images, _ = validation_images(next(iter(runs.values())).read().config, args.rows)
    out = study.root / "report" / f"masks_seed{args.seed}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    attack_grid({"image": images, **{variant: masks_of(run.checkpoint, images) for variant, run in runs.items()}},
                out, rows=args.rows, denormalize=denormalize)
    print(f"{', '.join(runs)} (seed {args.seed}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
