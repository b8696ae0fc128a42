"""Judges from outside casm (docs/evaluation.md): any ``nn.Module`` a builder makes, with a weights file.

A judge is a classifier the evaluation asks "is this masked image still recognisable?". casm's own
checkpoints are one kind; a user's own classifier is the other: an importable builder (a torchvision
model, or ``my_package.models:build``) called with ``kwargs``, loaded with a state dict read safely
(``weights_only=True`` or safetensors). It sees the images exactly as casm's classifiers do
(normalized with the ImageNet mean and std, at the evaluation size) and may return logits or a tuple
whose first element is the logits.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from casm.checkpoints import read_weights
from casm.errors import UserError
from casm.models.outputs import logits_of


def import_builder(spec: str) -> Callable[..., nn.Module]:
    """``package.module.function`` or ``package.module:function`` -> the callable."""
    module_name, _, attribute = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attribute:
        raise UserError(f"judges: builder {spec!r} must be 'package.module.function' (e.g. torchvision.models."
                        f"resnet50) or 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"judges: cannot import {module_name!r} for builder {spec!r} ({err})") from err
    builder = getattr(module, attribute, None)
    if not callable(builder):
        raise UserError(f"judges: {module_name} has no callable {attribute!r} (builder {spec!r})")
    return builder


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line, in the order of the model's outputs (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judges: class list not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"judges: {path} names a class twice")
    return names


def build_judge(builder: str, weights: str, kwargs: dict | None, image_size: int) -> tuple[nn.Module, int]:
    """The judge in eval mode with its weights, and its number of outputs (from one forward pass on a
    blank image of the evaluation size, which also shows that it runs on casm's input)."""
    model = import_builder(builder)(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise UserError(f"judges: builder {builder!r} returned a {type(model).__name__}, not an nn.Module")
    state = read_weights(weights)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # weights saved from DataParallel/DDP
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise UserError(f"judges: {weights} does not fit {builder}({kwargs or ''}): "
                        f"{' '.join(first[:3])[:300]}") from err
    model.eval()
    with torch.no_grad():
        output = logits_of(model(torch.zeros(1, 3, image_size, image_size)))
    if output.dim() != 2:
        raise UserError(f"judges: {builder} returns outputs of shape {tuple(output.shape)}, not (batch, classes)")
    return model, output.shape[1]


class Logits(nn.Module):
    """Wraps a judge so it returns ``(logits, None)`` like casm's classifiers."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model, self.num_classes = model, num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return logits_of(self.model(x)), None
