"""LFI-CAM's own classifier (docs/heads.md): the attention map re-weights the features it is computed
from, and a perception branch classifies ``F * (1 + A)``. Trained with cross-entropy only; the
attention map is then an explanation method like CAM (``evaluate.py methods=[lficam]``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from casm.models.attention import LFIAttention
from casm.models.resnet import ResNetTrunk


class LFICAMClassifier(nn.Module):
    """``x -> (logits, features, attention)``; attention (B, 1, h, w) in [0, 1] at the layer4 grid."""

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000, width: int = 64, fin_width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(arch, width)
        self.attention = LFIAttention(self.trunk.channels["layer4"], fin_width)
        self.fc = nn.Linear(self.trunk.channels["layer4"], num_classes)
        self.num_classes = num_classes

    def perceive(self, features: Tensor, attention: Tensor) -> Tensor:
        """The perception branch: GAP + linear on ``F * (1 + A)`` (plain GAP + linear when A = 0)."""
        return self.fc((features * (1 + attention)).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        feats = self.trunk(x)
        attention, _ = self.attention(feats["layer4"], x)
        return self.perceive(feats["layer4"], attention), feats, attention

    def explain(self, x: Tensor) -> Tensor:
        """Attention maps upsampled to the input: (B, H, W) in [0, 1]."""
        attention = self.forward(x)[2]
        return F.interpolate(attention, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)

    def load_trunk(self, state: dict[str, Tensor]) -> None:
        """Start from a classifier's trunk (torchvision or casm names)."""
        self.trunk.load_state_dict({k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")})
