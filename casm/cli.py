"""Command-line entry points: ``casm-train`` (and ``python train.py``)."""

from __future__ import annotations

import argparse
import sys

from casm.config import CONFIG_DIR, ConfigError, load_config


def _resume_config(overrides: list[str]) -> str | None:
    """A resumed run reuses the config saved next to its checkpoint unless --config is given."""
    from pathlib import Path

    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if not resume:
        return None
    saved = Path(resume).resolve().parent.parent / "config.yaml"
    return str(saved) if saved.is_file() else None


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="casm-train",
        description="Train a classifier-agnostic saliency masker (CASM).",
        epilog="Overrides are key=value, e.g. casm.thinning=F trainer.max_epochs=3 data.root=/data/imagenet. "
               f"Experiment configs live in {CONFIG_DIR}.",
    )
    parser.add_argument("--config", help="experiment YAML (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    config_file = args.config or _resume_config(args.overrides) or str(CONFIG_DIR / "default.yaml")
    try:
        cfg = load_config(config_file, args.overrides)
        from casm.training.run import train  # heavy imports only once the config is known to be valid

        run_dir = train(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run saved in {run_dir}")
    return 0
