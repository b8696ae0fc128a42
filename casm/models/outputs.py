"""What a classifier returns: casm's ``(logits, features)`` or a plain model's logits, made one."""

from __future__ import annotations

from torch import Tensor, nn


def logits_of(output: Tensor | tuple) -> Tensor:
    """casm classifiers return ``(logits, features)``; plain ones return logits."""
    return output[0] if isinstance(output, (tuple, list)) else output


class LogitsOnly(nn.Module):
    """Wraps a casm classifier (``x -> (logits, features)``) for libraries that expect ``x -> logits``
    (grad-cam, torchcam, ONNX tools)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x))
