"""The evaluation harness behind evaluate.py (docs/evaluation.md)."""

from casm.evaluation.harness import Evaluator, evaluate
from casm.evaluation.loaders import load_classifier
from casm.trained_run import read_run

__all__ = ["Evaluator", "evaluate", "load_classifier", "read_run"]
