"""Any network as the masker's encoder: the outputs of named modules are the features its head reads.

casm's heads read a dict of feature maps named ``stem``, ``layer1`` ... ``layer4`` (:mod:`casm.models.resnet`);
``masker.encoder_model`` maps those names to modules of another network (say a ConvNeXt's
``features.1`` ... ``features.7``), whose outputs forward hooks collect in one pass. Hooks, rather than
torch.fx feature extraction, work on any ``nn.Module`` whatever its Python control flow; a module the
network calls twice yields its last call's output.
"""

from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

from casm.errors import UserError
from casm.models.modes import evaluation_mode


class NamedFeatureEncoder(nn.Module):
    """``encoder(x) -> {feature: map}`` for the ``layers`` mapping (head feature name -> module name), with
    ``channels`` measured by one forward pass on a blank image of ``image_size``."""

    def __init__(self, model: nn.Module, layers: dict[str, str], image_size: int,
                 who: str = "masker.encoder_model") -> None:
        super().__init__()
        self.model = model
        self.layers = dict(layers)
        modules = dict(model.named_modules())
        for feature, name in self.layers.items():
            if name not in modules:
                close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise UserError(f"{who}.layers.{feature}={name!r} is not a module of the encoder{hint}")
        with evaluation_mode(model):  # (with gradients: they show which parameters the features use, below)
            features = self(torch.zeros(1, 3, image_size, image_size))
        for feature, value in features.items():
            if not (isinstance(value, Tensor) and value.dim() == 4):
                raise UserError(f"{who}.layers.{feature}={self.layers[feature]!r} gives "
                                f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}, not a (B, C, H, W) map")
        self.channels = {feature: value.shape[1] for feature, value in features.items()}
        # parameters no named feature depends on (the network's own classifier head) would get no gradient
        # from the masker's loss: they are frozen, so they neither train nor trip the masker's optimizer
        trainable = [p for p in model.parameters() if p.requires_grad]
        used = torch.autograd.grad(sum(f.sum() for f in features.values()), trainable, allow_unused=True)
        for parameter, gradient in zip(trainable, used):
            if gradient is None:
                parameter.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        captured: dict[str, Tensor] = {}
        handles = [self.model.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, feature=feature: captured.__setitem__(feature, output))
            for feature, name in self.layers.items()]
        try:
            self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return {feature: captured[feature] for feature in self.layers}
