"""Command-line entry points: ``python -m casm SUBCOMMAND``, ``casm-train`` (and ``python train.py``).

Each subcommand imports what it runs (torch, Lightning, the training or evaluation layer) inside its own
function, after its arguments are parsed and checked: ``--help``, a typo or a bad value answers in a
fraction of a second instead of after seconds of imports.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback

from casm.config import CONFIG_DIR, MANIPULATION_ATTACKS, RESUME_LAST, load_config
from casm.data.images import DEFAULT_MAX_PIXELS
from casm.errors import CheckpointWriteError, NonFiniteLossError, UserError
from casm.locks import is_first_process

# bad input or a full disk: a one-line message (two when one fault led to another), exit code 2; anything
# else is a bug in casm and keeps its traceback (exit 1)
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, CheckpointWriteError, NonFiniteLossError)


def speaks() -> bool:
    """Whether this process writes the console's closing lines (:func:`casm.locks.is_first_process`)."""
    return is_first_process()


def _earlier_write_errors(err: BaseException) -> list[BaseException]:
    """Checkpoint write failures during whose handling ``err`` was raised, oldest first."""
    found, seen = [], {id(err)}
    context = err.__context__
    while context is not None and id(context) not in seen:
        seen.add(id(context))
        if isinstance(context, CheckpointWriteError):
            found.append(context)
        context = context.__context__
    return found[::-1]


def reports_user_errors(main):
    """Turn bad input (a config typo, a missing file, a wrong checkpoint) into one line on stderr."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as err:
            # an error raised in a DataLoader worker carries the worker's traceback: its last line says it
            lines = str(err).strip().splitlines() or [type(err).__name__]
            message = lines[-1].split(": ", 1)[-1] if "Original Traceback" in str(err) else " ".join(lines)
            for earlier in _earlier_write_errors(err):  # e.g. the epoch checkpoint before interrupted.ckpt
                print(f"error: {earlier}", file=sys.stderr)
            print(f"error: {message}", file=sys.stderr)
            return 2
        except Exception:
            traceback.print_exc()
            print("error: an internal error in casm (a bug, not your input): please report it with the traceback "
                  "above and the command line", file=sys.stderr)
            return 1

    return wrapped


def _add_trust_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--trust-builder", action="append", default=[], metavar="MODULE",
                        help=f"{what} built by a network from outside casm and torchvision is rebuilt by running "
                             f"MODULE's code: allow it (repeatable; or CASM_TRUSTED_BUILDERS=MODULE,...)")


def _trust(modules: list[str]) -> None:
    """``--trust-builder``: for every file this command (and any process it starts) reads."""
    from casm.models.builders import TRUST_ENV

    if modules:
        os.environ[TRUST_ENV] = " ".join([os.environ.get(TRUST_ENV, ""), *modules]).strip()


def _resume_config(overrides: list[str]) -> str | None:
    """A resumed run reuses the config saved next to its checkpoint unless --config is given (resume=last
    has no checkpoint named yet: the command line that started the run gives the config again)."""
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if not resume or resume == RESUME_LAST:
        return None
    from casm.checkpoints import run_folder  # torch: only once a resume is asked for

    saved = run_folder(resume) / "config.yaml"
    return str(saved) if saved.is_file() else None


@reports_user_errors
def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="casm-train",
        description="Train a classifier-agnostic saliency masker (CASM).",
        epilog="Overrides are key=value, e.g. casm.thinning=F trainer.max_epochs=3 data.root=/data/imagenet. "
               f"Experiment configs live in {CONFIG_DIR}.",
    )
    parser.add_argument("--config", help="experiment YAML (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_intermixed_args(argv)  # flags and key=value overrides in any order
    config_file = args.config or _resume_config(args.overrides) or str(CONFIG_DIR / "default.yaml")
    cfg = load_config(config_file, args.overrides)
    from casm.training.run import train  # heavy imports only once the config is known to be valid

    run_dir = train(cfg)
    if speaks():
        c = cfg.casm
        alone = cfg.mode == "casm" and c.warmup_epochs >= cfg.trainer.max_epochs and c.warmup_accuracy is None
        print(f"run saved in {run_dir}" + (f" (its classifier alone: casm.warmup_epochs={c.warmup_epochs} >= "
                                          f"trainer.max_epochs={cfg.trainer.max_epochs}, so no masker was trained; "
                                          f"it serves as a judge or a pretrained classifier)" if alone else ""))
    return 0


@reports_user_errors
def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="casm export", description="Export a trained masker as a standalone folder "
                                     "(masker.safetensors + masker.json, optionally masker.onnx).")
    parser.add_argument("checkpoint",
                        help="a casm training checkpoint (e.g. runs/default/version_0/checkpoints/last.ckpt)")
    parser.add_argument("out_dir", help="folder to write")
    parser.add_argument("--onnx", action="store_true", help="also write masker.onnx, validated against PyTorch")
    parser.add_argument("--with-classifier", action="store_true",
                        help="also export the run's classifier: one forward pass gives logits and mask "
                             "(explainer.onnx with --onnx)")
    _add_trust_argument(parser, "a checkpoint whose classifier or encoder is")
    args = parser.parse_args(argv)
    _trust(args.trust_builder)
    from casm.export import export_masker

    out = export_masker(args.checkpoint, args.out_dir, onnx=args.onnx, with_classifier=args.with_classifier)
    print(f"masker{' and classifier' if args.with_classifier else ''} exported to {out}")
    return 0


@reports_user_errors
def explain_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="casm explain", description="Saliency masks, overlays and boxes for "
                                     "images, with an exported masker (one forward pass per batch).")
    parser.add_argument("export_dir", help="a folder written by 'casm export'")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=["png", "png16", "npy"], default="png", help="mask file format")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                        help="larger images are skipped unread (decompression-bomb guard; default %(default).0f)")
    _add_trust_argument(parser, "an export whose classifier or encoder is")
    parser.add_argument("--masks-only", action="store_true", help="ignore an exported classifier (no prediction)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_megapixels <= 0:
        parser.error("--batch-size and --max-megapixels must be positive")
    from casm.export import load_masker, write_explanations
    from casm.export.standalone import has_classifier

    masker = load_masker(args.export_dir, device=args.device,
                         with_classifier=has_classifier(args.export_dir) and not args.masks_only,
                         trusted_builders=tuple(args.trust_builder))
    written, errors = write_explanations(masker, args.images, args.out, args.format, args.batch_size, args.amp,
                                         progress=not args.no_progress, max_pixels=int(args.max_megapixels * 1e6))
    for message in errors:
        print(message, file=sys.stderr)
    print(f"{written} image(s) explained in {args.out}" + (f", {len(errors)} skipped" if errors else ""))
    return 1 if errors else 0


@reports_user_errors
def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="casm evaluate",
        description="Evaluate a trained masker against CAM, Grad-CAM, Grad-CAM++ and Score-CAM on the same images.",
        epilog="Overrides are key=value over casm.config.EvalConfig, e.g. methods=[casm,gradcam] max_images=200 "
               "chunk_size=512 classifiers=[runs/r34/version_0/checkpoints/last.ckpt]. The data config "
               "defaults to the checkpoint's own (data.* keys override it).")
    parser.add_argument("--checkpoint", required=True, help="a casm training checkpoint")
    parser.add_argument("--config", help="YAML over the evaluation schema")
    parser.add_argument("--no-progress", action="store_true")
    _add_trust_argument(parser, "a checkpoint whose classifier or encoder is")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_intermixed_args(argv)  # flags and key=value overrides in any order
    _trust(args.trust_builder)
    from casm.config import EvalConfig, evaluation_data
    from casm.evaluation import evaluate, read_run

    run = read_run(args.checkpoint)  # read once; its data config is the default
    saved = run.config
    cfg = load_config(args.config, args.overrides + [f"checkpoint={args.checkpoint}"], schema_class=EvalConfig,
                      base={"data": evaluation_data(saved["data"], args.overrides, args.config),
                            "fill": saved.get("casm", {}).get("fill", "mean")})
    results, evaluator, out = evaluate(cfg, progress=not args.no_progress, trained=run)
    from casm.evaluation.report import markdown_table

    if speaks():
        print(markdown_table(results, evaluator.partial_judges))
        print(f"report written to {out} (metrics.json, metrics.md, figure.png, tensorboard/)")
    return 0


@reports_user_errors
def split_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="casm split", description="Write a class split file for unseen-class experiments: the dataset's classes "
        "cut into disjoint subsets A, B, ... (default: the CASM paper's 5/5/10/30/30/20 %).",
        epilog="Train on some subsets with data.split_file=FILE data.split_subsets=[C,D,E,F]; "
               "python -m casm experiment unseen runs the whole protocol.")
    parser.add_argument("--config", help="training YAML whose data section names the dataset (default: "
                        "configs/default.yaml)")
    parser.add_argument("--out", required=True, help="the split file to write (JSON)")
    parser.add_argument("--proportions", default="0.05,0.05,0.10,0.30,0.30,0.20",
                        help="one share per subset, comma-separated (they are normalized to sum to 1)")
    parser.add_argument("--seed", type=int, default=0, help="the shuffle's seed")
    parser.add_argument("--force", action="store_true", help="overwrite an existing split file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.synthetic_classes=100")
    args = parser.parse_intermixed_args(argv)  # flags and key=value overrides in any order
    from pathlib import Path

    from casm.data.datasets import dataset_classes
    from casm.data.splits import make_split

    cfg = load_config(args.config or str(CONFIG_DIR / "default.yaml"), args.overrides)
    if Path(args.out).exists() and not args.force:
        raise FileExistsError(f"{args.out} exists; runs trained on it would change meaning. Pass --force to replace it")
    try:
        proportions = [float(p) for p in args.proportions.split(",")]
    except ValueError as err:
        raise UserError(f"--proportions {args.proportions!r}: expected numbers separated by commas") from err
    split = make_split(dataset_classes(cfg.data), cfg.data.name, proportions, args.seed)
    split.save(args.out)
    for name, classes in split.subsets.items():
        print(f"{name}: {len(classes):>4} classes ({split.proportions[name]:.0%})  {', '.join(classes[:3])}"
              + (", ..." if len(classes) > 3 else ""))
    print(f"split written to {args.out} (dataset fingerprint {split.dataset['fingerprint'][:12]})")
    return 0


@reports_user_errors
def experiment_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="casm experiment", description="Run a whole experiment: 'study' = variants of a training config, each "
        "over the same seeds, evaluated alike, one report of means, intervals and paired differences "
        "(docs/studies.md); "
        "'unseen' = the CASM paper's unseen-class protocol (split, one training run per training set and seed, every "
        "model evaluated on every subset, a report).",
        epilog="Killed and started again with the same command, it skips finished runs and resumes the unfinished "
               "ones. study: the overrides change the study file (e.g. seeds=[0,1]); unseen: the training config.")
    parser.add_argument("protocol", choices=["study", "unseen"])
    parser.add_argument("--config", help="study: the study YAML (required); unseen: training YAML with an unseen "
                                         "section (default: configs/unseen.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs it would make and their commands, "
                                                               "and stop")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (see above)")
    args = parser.parse_intermixed_args(argv)  # flags and key=value overrides in any order
    if args.protocol == "study":
        return _study(args)
    from casm.experiments.unseen import UnseenExperiment

    cfg = load_config(args.config or str(CONFIG_DIR / "unseen.yaml"), args.overrides)
    experiment = UnseenExperiment(cfg)
    if args.dry_run:
        split = experiment.split(write=False)
        print(experiment.describe(split, experiment.plan(split)))
        return 0
    experiment.run(progress=not args.no_progress)
    return 0


def _study(args: argparse.Namespace) -> int:
    from casm.experiments.study import Study, load_study

    if not args.config:
        raise UserError("experiment study needs --config STUDY.yaml (examples: casm/configs/studies/)")
    cfg, path = load_study(args.config, args.overrides)
    study = Study(cfg, path)
    if args.dry_run:
        print(study.describe(study.plan()))
        return 0
    study.run(progress=not args.no_progress)
    return 0


@reports_user_errors
def sanity_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="casm sanity", description="Sanity checks of the post-hoc methods on a trained classifier: the Grad-CAM "
        "manipulation attacks T1-T4, and the cascading randomization of the classifier (for each CAM method) and of "
        "the masker (docs/sanity.md). Writes sanity.json, sanity.md, a PNG grid per attack, randomization.png, "
        "TensorBoard.")
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="a casm training checkpoint (its classifier is attacked); several runs (seeds): each "
                        "run's report in its RUN/sanity, then every number as mean ± sd over them")
    parser.add_argument("--out", help="output folder (default: RUN/sanity; with several checkpoints, the summary's "
                        "folder, default their runs' common parent/sanity_over_runs)")
    parser.add_argument("--images", type=int, default=64, help="validation images measured (default 64)")
    parser.add_argument("--slow-images", type=int, default=8, help="of those, for Score-CAM (default 8)")
    parser.add_argument("--attacks", default=",".join(MANIPULATION_ATTACKS))
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--no-randomization", action="store_true", help="the attacks only")
    _add_trust_argument(parser, "a checkpoint whose classifier or encoder is")
    args = parser.parse_args(argv)
    _trust(args.trust_builder)
    from casm.sanity.attacks import attacks_table
    from casm.sanity.report import cascade_table, sanity_report

    attacks = tuple(a.strip() for a in args.attacks.split(","))
    unknown = [a for a in attacks if a not in MANIPULATION_ATTACKS]
    if unknown or args.images < 1 or args.slow_images < 1:
        raise UserError(f"--attacks takes {','.join(MANIPULATION_ATTACKS)} (got {unknown}); "
                        f"--images and --slow-images >= 1")
    if len(args.checkpoint) > 1:
        from casm.experiments.sanity_runs import sanity_over_runs, summary_tables

        summary, out = sanity_over_runs(args.checkpoint, args.out, args.images, args.slow_images, attacks,
                                        args.device, randomization=not args.no_randomization)
        print(summary_tables(summary))
        print(f"each run's report in its RUN/sanity ({', '.join(summary['reports'])}); "
              f"the summary written to {out} (sanity_over_runs.json, sanity_over_runs.md)")
        return 0
    report, out = sanity_report(args.checkpoint[0], args.out, args.images, args.slow_images, attacks, args.device,
                                randomization=not args.no_randomization)
    print(attacks_table(report["attacks"]))
    if "randomization" in report:
        print(cascade_table(report["randomization"], report["randomization_chance"]))
    plot = ", randomization.png" if "randomization" in report else ""
    print(f"report written to {out} (sanity.json, sanity.md, attack_T*.png{plot}, tensorboard/)")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


COMMANDS = {"train": train_main, "evaluate": evaluate_main, "export": export_main, "explain": explain_main,
            "split": split_main, "experiment": experiment_main, "sanity": sanity_main}


def main(argv: list[str] | None = None) -> int:
    """``python -m casm {train,evaluate,export,explain,split,experiment} ...``"""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m casm {{{','.join(COMMANDS)}}} ...  (each with --help)", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
