"""The evaluation harness behind evaluate.py (docs/evaluation.md)."""

from casm.evaluation.harness import Evaluator, evaluate
from casm.evaluation.loaders import load_classifier
from casm.training.module import load_trained

__all__ = ["Evaluator", "evaluate", "load_classifier", "load_trained"]
