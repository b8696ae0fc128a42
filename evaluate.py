"""Evaluate a trained masker against the CAM baselines: ``python evaluate.py --checkpoint CKPT key=value ...``."""

import sys

from casm.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
