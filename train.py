"""Train a classifier-agnostic masker: ``python train.py [--config FILE] key=value ...``."""

import sys

from casm.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
