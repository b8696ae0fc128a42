"""The shared machinery of the CAM family: a hooked target layer, target classes, normalization.

A method is a context manager: entering registers a forward hook on the target layer, leaving
removes it, also after an exception. Calling it on a batch returns one map per image::

    with GradCAM(classifier) as method:
        maps = method(images)            # (B, H, W) in [0, 1], the predicted class
        maps = method(images, class_idx=3)

Subclasses supply the channel weights (:meth:`CAMMethod.channel_weights`) or, for methods that do not
weight whole channels, the map itself (:meth:`CAMMethod.saliency`). Gradients are taken with
``torch.autograd.grad`` on the stored activation, so the model's own ``.grad`` is never touched.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from casm.errors import UserError
from casm.models.modes import evaluation_mode
from casm.models.outputs import LogitsOnly, logits_of  # noqa: F401  (part of this module's interface)


def default_target_layer(model: nn.Module) -> str:
    """The last stage: ``trunk.layer4`` (casm), ``layer4`` (torchvision ResNets; ``model.layer4`` inside a run's
    outside classifier), ``features`` (VGG, DenseNet, EfficientNet, ConvNeXt), else the last conv."""
    names = dict(model.named_modules())
    for candidate in ("trunk.layer4", "layer4", "model.layer4", "features", "model.features"):
        if candidate in names:
            return candidate
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError("the model has no convolution to explain; give target_layer")
    return convs[-1]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        stages = [n for n in modules if n and n.count(".") <= 1]
        close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"target layer {name!r} does not exist; {hint}valid layers include: {', '.join(stages[:30])}")
    return modules[name]


def min_max(maps: Tensor) -> Tensor:
    """Per-image min-max of (B, h, w) maps to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low + 1e-7)).view_as(maps)


def upsample_and_normalize(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h, w) -> (B, H, W) in [0, 1]: min-max, bilinear upsampling, min-max again.

    The first min-max makes a constant map exactly 0 before interpolation rounding could turn it
    into noise; the second restores the full range that bilinear upsampling can shave off."""
    up = F.interpolate(min_max(cam.float())[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return min_max(up)


class SaliencyMethod:
    """What the evaluation asks of any method: a context manager (it may hold hooks) whose call maps
    a batch of normalized images to one map per image, for the predicted or a given class."""

    name = "base"

    def __enter__(self) -> "SaliencyMethod":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __call__(self, images: Tensor, class_idx: int | Tensor | None = None) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _targets(logits: Tensor, class_idx: int | Tensor | None) -> Tensor:
        if class_idx is None:
            return logits.argmax(dim=1)
        if isinstance(class_idx, int):
            return torch.full((len(logits),), class_idx, device=logits.device, dtype=torch.long)
        return class_idx.to(logits.device).long()


class CAMMethod(SaliencyMethod):
    """Base class of the CAM family: hook handling and the final map; see the module docstring."""

    needs_gradients = False

    def __init__(self, model: nn.Module, target_layer: str | None = None, normalize: bool = True) -> None:
        self.model = model
        self.normalize = normalize  # False: ReLU(sum_k w_k A_k) upsampled, unscaled (the sanity checks compare
        #                             shapes with their own scaling: a constant map survives, min-max zeroes it)
        self.target_layer = target_layer or default_target_layer(model)
        self.layer = resolve_layer(model, self.target_layer)
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._activation: Tensor | None = None
        self._calls = 0  # calls of the target layer in the latest forward pass

    def __enter__(self) -> "CAMMethod":
        self._handle = self.layer.register_forward_hook(self._store)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._activation = None, None

    def _store(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        """Keeps the layer's output; a module the network calls more than once per pass (a shared activation
        module) leaves its last call's, and ``_calls`` says how many there were."""
        self._activation = output
        self._calls += 1

    def __call__(self, images: Tensor, class_idx: int | Tensor | None = None) -> Tensor:
        """(B, 3, H, W) normalized images -> (B, H, W) maps in [0, 1]."""
        if self._handle is None:
            name = type(self).__name__
            raise RuntimeError(f"use {name} as a context manager: with {name}(model) as m")
        grad_mode = torch.enable_grad() if self.needs_gradients else torch.inference_mode()
        with evaluation_mode(self.model), grad_mode:
            x = images.detach().requires_grad_(self.needs_gradients)
            self._calls = 0
            logits = logits_of(self.model(x))  # (B, num_classes)
            activation = self._activation  # (B, K, h, w)
            targets = self._targets(logits, class_idx)
            cam = self.saliency(activation, logits, targets, images)  # (B, h, w), before the ReLU
        self._activation = None
        with torch.no_grad():
            cam = F.relu(cam.detach())
            if not self.normalize:
                return F.interpolate(cam.float()[:, None], size=images.shape[-2:], mode="bilinear",
                                     align_corners=False)[:, 0]
            return upsample_and_normalize(cam, images.shape[-2:])

    def saliency(self, activation: Tensor, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        """The map before its ReLU, (B, h, w). Most methods weight whole channels, ``sum_k w_k A^k`` with
        :meth:`channel_weights`; methods that weight each position (HiResCAM, LayerCAM) or project the
        activation (EigenCAM) override this instead."""
        weights = self.channel_weights(activation, logits, targets, images)  # (B, K)
        return torch.einsum("bk,bkhw->bhw", weights, activation.detach())

    @contextmanager
    def _activation_kept(self):
        """Extra forward passes inside (Score-CAM's masked images, Ablation-CAM's ablated layer) must not
        overwrite the stored activation: the storing hook is off meanwhile, and back afterwards."""
        self._handle.remove()
        try:
            yield
        finally:
            self._handle = self.layer.register_forward_hook(self._store)

    def channel_weights(self, activation: Tensor, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        raise NotImplementedError
