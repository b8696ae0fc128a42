"""Mask heads: modules that turn encoder features into a saliency mask in [0, 1].

Every head has the same interface, so CASM training, evaluation and export never need to know which
one they hold: ``head(features, image) -> mask`` with ``features`` the dict a
:class:`~casm.models.resnet.ResNetTrunk` returns and ``mask`` of shape (B, 1, H, W) at the image's
resolution. Every head is named in :data:`casm.models.head_registry.HEADS`, which builds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskHead(nn.Module):
    """Base class; subclasses implement :meth:`forward`."""

    def forward(self, features: dict[str, Tensor], image: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class SigmoidHead(MaskHead):
    """A head whose mask is the sigmoid of a one-channel logit map. Training can read the logits
    (:meth:`mask_and_logits`) to keep them out of the sigmoid's flat ends (``casm.mask_logit_bound``):
    a saturated mask gets no gradient from any loss, so a mask driven all-on or all-off stays there."""

    def logits(self, features: dict[str, Tensor], image: Tensor) -> Tensor:  # pragma: no cover
        """(B, 1, h, w) logits at the head's own resolution."""
        raise NotImplementedError

    def to_mask(self, logits: Tensor, image: Tensor) -> Tensor:  # pragma: no cover
        """The (B, 1, H, W) mask at the image's resolution."""
        raise NotImplementedError

    def mask_and_logits(self, features: dict[str, Tensor], image: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.logits(features, image)
        return self.to_mask(logits, image), logits

    def forward(self, features: dict[str, Tensor], image: Tensor) -> Tensor:
        return self.to_mask(self.logits(features, image), image)


def _on_grid(feature: Tensor, grid: torch.Size) -> Tensor:
    """``feature`` resized to ``grid`` where it differs: another encoder's stem may sit at H/2 where a ResNet's
    (after its max-pool) shares layer1's H/4 grid (masker.encoder_model)."""
    if feature.shape[-2:] == grid:
        return feature
    return F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class CasmeDecoder(SigmoidHead):
    """The published CASME decoder layout (docs/heads.md).

    layer1..4 -> 1x1 conv to ``hidden`` + BN + ReLU, bilinearly upsampled to the layer1 grid (H/4),
    concatenated with the stem features (4*hidden + stem channels; 320 for ResNet at width 64),
    a 3x3 conv to one channel, sigmoid, and nearest-neighbour upsampling x4 to the input size.
    """

    def __init__(self, channels: dict[str, int], hidden: int = 64) -> None:
        super().__init__()
        self.reduce = nn.ModuleDict({f"layer{i}": _conv_bn_relu(channels[f"layer{i}"], hidden) for i in range(1, 5)})
        self.out = nn.Conv2d(4 * hidden + channels["stem"], 1, kernel_size=3, padding=1)

    def logits(self, features: dict[str, Tensor], image: Tensor) -> Tensor:
        grid = features["layer1"].shape[-2:]  # H/4, W/4
        reduced = [
            F.interpolate(self.reduce[name](features[name]), size=grid, mode="bilinear", align_corners=False)
            if features[name].shape[-2:] != grid else self.reduce[name](features[name])
            for name in ("layer1", "layer2", "layer3", "layer4")
        ]
        x = torch.cat([_on_grid(features["stem"], grid), *reduced], dim=1)  # (B, 4*hidden + C_stem, H/4, W/4)
        return self.out(x)  # (B, 1, H/4, W/4)

    def to_mask(self, logits: Tensor, image: Tensor) -> Tensor:
        return F.interpolate(torch.sigmoid(logits), size=image.shape[-2:], mode="nearest")


class UpBlock(nn.Module):
    """Transposed-conv x2 upsampling, then a 3x3 conv fusing the (already reduced) skip feature."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=False)
        self.fuse = _conv_bn_relu(out_ch + skip_ch, out_ch, kernel=3)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = self.up(x)
        if skip is None:
            return self.fuse(x)
        if x.shape[-2:] != skip.shape[-2:]:  # inputs not divisible by 32
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], dim=1))


class DeconvDecoder(SigmoidHead):
    """The paper's "deconvolutional network": learned x2 upsampling from layer4 (H/32) to full
    resolution, fusing layer3, layer2 and layer1+stem on the way (U-Net style), sigmoid output.

    Every input is first reduced to ``hidden`` channels by a 1x1 conv (as in the casme decoder and
    FPN), so the upsampling path runs at ``hidden`` width. Fusing the raw 1024/2048-channel ResNet-50
    features with 3x3 convs instead costs ~2.7 GMACs at 224 px, two thirds of the encoder; this
    layout costs ~0.7 GMACs.
    """

    def __init__(self, channels: dict[str, int], hidden: int = 64) -> None:
        super().__init__()
        h = hidden
        self.lateral = nn.ModuleDict({
            "layer4": _conv_bn_relu(channels["layer4"], h),
            "layer3": _conv_bn_relu(channels["layer3"], h),
            "layer2": _conv_bn_relu(channels["layer2"], h),
            "layer1": _conv_bn_relu(channels["layer1"] + channels["stem"], h),  # stem and layer1 share H/4
        })
        self.up3 = UpBlock(h, h, h)  # H/32 -> H/16
        self.up2 = UpBlock(h, h, h)  # -> H/8
        self.up1 = UpBlock(h, h, h)  # -> H/4
        self.up0 = UpBlock(h, 0, h // 2)  # -> H/2
        self.final = nn.ConvTranspose2d(h // 2, 1, kernel_size=4, stride=2, padding=1)  # -> H

    def logits(self, features: dict[str, Tensor], image: Tensor) -> Tensor:
        x = self.lateral["layer4"](features["layer4"])  # (B, h, H/32, W/32)
        x = self.up3(x, self.lateral["layer3"](features["layer3"]))
        x = self.up2(x, self.lateral["layer2"](features["layer2"]))
        stem = _on_grid(features["stem"], features["layer1"].shape[-2:])
        x = self.up1(x, self.lateral["layer1"](torch.cat([features["layer1"], stem], dim=1)))
        x = self.up0(x, None)  # (B, h/2, H/2, W/2)
        logits = self.final(x)  # (B, 1, H, W)
        if logits.shape[-2:] != image.shape[-2:]:
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def to_mask(self, logits: Tensor, image: Tensor) -> Tensor:
        return torch.sigmoid(logits)
