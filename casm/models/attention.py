"""LFI-CAM-style attention heads (docs/heads.md): alternates to the decoders, same ``head(features, image)``
interface, so CASM trains them with the same objective and pool (``masker.head=lfi`` / ``abn``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from casm.models.heads import MaskHead, SigmoidHead


def spatial_min_max(maps: Tensor, constant: float = 1.0) -> Tensor:
    """Per-sample, per-channel min-max over space of (B, K, h, w); a constant map becomes ``constant``
    (1 for LFI-CAM's normalized feature maps: docs/heads.md)."""
    flat = maps.flatten(2)
    low = flat.min(dim=2, keepdim=True).values
    high = flat.max(dim=2, keepdim=True).values
    span = high - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp(min=1e-12), torch.full_like(flat, constant))
    return scaled.view_as(maps)


class FeatureImportanceNetwork(nn.Module):
    """K gray-masked feature maps -> K importance scores (softmax over channels happens outside).

    The original FIN is four 3x3 K->K convolutions (~150 M parameters at K = 2048). Here the width is
    configurable: 1x1 K->width, two 3x3 width->width (BN, ReLU), 1x1 width->K, global average pooling
    (~0.35 M parameters at K = 2048, width 64)."""

    def __init__(self, channels: int, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 1),
        )

    def forward(self, masked_maps: Tensor) -> Tensor:
        return self.body(masked_maps).mean(dim=(2, 3))  # (B, K)


def gray_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Channel mean of the normalized image, resized to the feature grid: (B, 1, h, w)."""
    return F.interpolate(image.mean(dim=1, keepdim=True), size=size, mode="bilinear", align_corners=False)


class LFIAttention(nn.Module):
    """LFI-CAM's attention: importance ``w = softmax(FIN(minmax(F) * gray))`` and
    ``A = minmax(ReLU(sum_k w_k F_k))`` in [0, 1], at the feature grid."""

    def __init__(self, channels: int, width: int = 64) -> None:
        super().__init__()
        self.fin = FeatureImportanceNetwork(channels, width)

    def forward(self, features: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        """(B, K, h, w) features (after ReLU) -> (attention (B, 1, h, w), importance (B, K))."""
        gray = gray_image(image, features.shape[-2:])
        importance = torch.softmax(self.fin(spatial_min_max(features) * gray), dim=1)  # (B, K), sums to 1
        cam = F.relu((importance[:, :, None, None] * features).sum(dim=1, keepdim=True))
        return spatial_min_max(cam, constant=0.0), importance  # a constant map: no evidence anywhere


class LFIHead(MaskHead):
    """``masker.head=lfi``: LFI-CAM attention on one feature layer (layer4, as in LFI-CAM, unless
    ``masker.feature_layer`` says otherwise), bilinearly upsampled to the input as the mask."""

    default_feature_layer = "layer4"

    def __init__(self, channels: dict[str, int], hidden: int = 64, feature_layer: str | None = None) -> None:
        super().__init__()
        self.feature_layer = feature_layer or self.default_feature_layer
        self.attention = LFIAttention(channels[self.feature_layer], hidden)

    def forward(self, features: dict[str, Tensor], image: Tensor) -> Tensor:
        attention, _ = self.attention(features[self.feature_layer], image)
        return F.interpolate(attention, size=image.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


class ABNHead(SigmoidHead):
    """``masker.head=abn``: the Attention Branch Network's attention branch (Fukui et al., 2019): a
    conv stack on one feature layer (layer3, as in ABN, unless ``masker.feature_layer`` says otherwise),
    a one-channel sigmoid map, upsampled to the input."""

    default_feature_layer = "layer3"

    def __init__(self, channels: dict[str, int], hidden: int = 64, feature_layer: str | None = None) -> None:
        super().__init__()
        self.feature_layer = feature_layer or self.default_feature_layer
        c = channels[self.feature_layer]
        self.branch = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def logits(self, features: dict[str, Tensor], image: Tensor) -> Tensor:
        return self.branch(features[self.feature_layer])  # (B, 1, h, w)

    def to_mask(self, logits: Tensor, image: Tensor) -> Tensor:
        return F.interpolate(torch.sigmoid(logits), size=image.shape[-2:], mode="bilinear", align_corners=False)
