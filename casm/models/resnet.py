"""ResNet classifiers that also return their multi-scale features.

Built from torchvision's own ``BasicBlock``/``Bottleneck`` so that, at the default width, parameter
names match torchvision's ``resnet18/34/50`` exactly and a torchvision weights file loads as is. A
``width`` below 64 gives the tiny models tests and laptop runs need.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from casm.checkpoints import read_weights
from casm.errors import UserError

FEATURE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")

_ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNetTrunk(nn.Module):
    """Stem + four stages. ``forward`` returns a dict of features (see ``FEATURE_NAMES``).

    Shapes for an input (B, 3, H, W) and width w (e = 1 for BasicBlock, 4 for Bottleneck):
    stem (B, w, H/4, W/4) after the max-pool, layer1 (B, w*e, H/4, W/4), layer2 (B, 2w*e, H/8, W/8),
    layer3 (B, 4w*e, H/16, W/16), layer4 (B, 8w*e, H/32, W/32).
    """

    def __init__(self, arch: str = "resnet18", width: int = 64) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise UserError(f"unknown architecture {arch!r}; choose one of {sorted(_ARCHS)}")
        block, layers = _ARCHS[arch]
        self.arch, self.width = arch, width
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.channels = {"stem": width, **{f"layer{i + 1}": width * 2**i * block.expansion for i in range(4)}}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        # Same construction as torchvision.models.resnet.ResNet._make_layer, with a free width.
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stem = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(stem)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return {"stem": stem, "layer1": l1, "layer2": l2, "layer3": l3, "layer4": l4}


class ResNetClassifier(nn.Module):
    """A ResNet trunk with global-average pooling and a linear head: ``x -> (logits, features)``."""

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(arch, width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.trunk.channels["layer4"], num_classes)
        self.num_classes = num_classes

    @property
    def arch(self) -> str:
        return self.trunk.arch

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        feats = self.trunk(x)
        logits = self.fc(torch.flatten(self.avgpool(feats["layer4"]), 1))  # (B, num_classes)
        return logits, feats

    def load_weights(self, path: str | Path) -> None:
        """Load a torchvision ResNet state dict, a casm classifier state dict or a casm Lightning
        checkpoint. A head of another size (e.g. 1000 ImageNet classes into 10) is left at its init."""
        self.load_state_dict_from(read_weights(path), path)

    def load_state_dict_from(self, state: dict, path: str | Path) -> None:
        """:meth:`load_weights` for a file already read (a state dict or a checkpoint dict)."""
        if "state_dict" in state:
            state = state["state_dict"]
        state = _classifier_state_from(state)
        own = self.state_dict()
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        head_only = all(k.startswith("fc.") for k in mismatched)
        if mismatched and not head_only:
            raise UserError(
                f"{path}: weights do not fit {self.arch} (width {self.trunk.width}): e.g. {mismatched[0]} is "
                f"{tuple(state[mismatched[0]].shape)}, expected {tuple(own[mismatched[0]].shape)}. "
                f"Set model.arch/model.width to the architecture the file was trained with."
            )
        state = {k: v for k, v in state.items() if k not in mismatched}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise UserError(
                f"{path}: not a {self.arch} state dict (missing {missing[:3]}, unexpected {unexpected[:3]}). "
                f"Give a torchvision ResNet weights file or a casm checkpoint of the same architecture."
            )


def _classifier_state_from(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision names (``conv1.weight``) and casm LightningModule names
    (``classifier.trunk.conv1.weight``) onto :class:`ResNetClassifier` names."""
    if any(k.startswith("classifier.") for k in state):
        return {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
    if any(k.startswith("trunk.") for k in state):
        return dict(state)
    return {(k if k.startswith("fc.") else f"trunk.{k}"): v for k, v in state.items()}
