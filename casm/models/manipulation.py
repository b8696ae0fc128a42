"""The Grad-CAM manipulation attacks T1-T4 (Viering et al., "How to manipulate CNNs to make them lie: the
Grad-CAM case"; docs/sanity.md), for casm's ResNet classifiers.

Each attack returns an edited copy of a trained classifier whose last stage (``trunk.layer4``, the
layer the CAM baselines explain) has one more channel ``Z`` and whose linear head has one more column:

* **T1** ``Z = c_A`` (a constant, 100), column ``c_W`` (100), bias lowered by ``c_W c_A``: the logits
  are unchanged, Grad-CAM shows a constant map.
* **T2** ``Z = c_I I_T`` (a fixed target image, c_I = 100), column ``c_W = 10``, bias lowered by
  ``c_W c_I mean(I_T)``: logits unchanged, every image's Grad-CAM is ``I_T``.
* **T3** ``Z = c_F F(x)`` with ``F`` a fixed random CNN of the input (an input-dependent target),
  column 0, and a score branch ``G(Z) = eps * mod(c_G * sum(Z), 1)`` (eps 0.01, c_G 1e4) added to every
  logit: logits move by less than eps, the ranking never changes, and dG/dZ = eps c_G is large, so
  Grad-CAM's weight of ``Z`` dwarfs the others.
* **T4** as T3, but ``F`` fires only where a sticker pattern is in the image: without the sticker the
  maps are the original ones, with it they point at the sticker.

The paper sums over positions (global sum pooling); casm's ResNets average, so the constants that
cancel are per position here (``c_W c_A`` rather than ``c_W c_A N_Z``). Everything is exact
arithmetic on large constants: in float32 the cancelled 1e4-sized terms leave about 1e-3 of rounding
in the logits, in float64 about 1e-12.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from casm.config import MANIPULATION_ATTACKS as ATTACKS  # one list: configs are checked against it too
from casm.errors import UserError
from casm.models.resnet import ResNetClassifier


@dataclass(frozen=True)
class Constants:
    """The paper's constants."""

    c_a: float = 100.0  # T1: the constant channel
    c_w1: float = 100.0  # T1: its linear weight
    c_i: float = 100.0  # T2: the target image's scale
    c_w2: float = 10.0  # T2: its linear weight
    c_f: float = 100.0  # T3/T4: the scale of F(x)
    epsilon: float = 0.01  # T3/T4: the score branch's largest value
    c_g: float = 1e4  # T3/T4: its slope


class RandomTarget(nn.Module):
    """T3's ``F``: a fixed, randomly initialized CNN from the image to a map in [0, 1] at the feature grid."""

    def __init__(self, seed: int = 0, width: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList([nn.Conv2d(3, width, 5, padding=2), nn.Conv2d(width, width, 5, padding=2),
                                    nn.Conv2d(width, 1, 5, padding=2)])
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (conv.weight[0].numel() ** 0.5))
                conv.bias.zero_()

    def forward(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        x = images
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.max_pool2d(F.relu(x), 2)  # large receptive field: smooth, blob-like targets
        x = F.adaptive_avg_pool2d(x, grid)[:, 0]
        low = x.flatten(1).min(1).values[:, None, None]
        high = x.flatten(1).max(1).values[:, None, None]
        return (x - low) / (high - low + 1e-7)  # (B, h, w) in [0, 1]


class StickerDetector(nn.Module):
    """T4's ``F``: 1 on the feature cells covering an exact copy of ``sticker`` (a (3, s, s) patch of
    normalized pixels), 0 elsewhere; 0 everywhere in an image without it."""

    def __init__(self, sticker: Tensor, tolerance: float = 1e-3) -> None:
        super().__init__()
        self.register_buffer("sticker", sticker.clone())
        self.tolerance = tolerance

    def forward(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        s = self.sticker
        # mean squared difference between the sticker and every patch: sum x^2 - 2 sum x s + sum s^2
        ones = torch.ones_like(s)[None]
        ssd = (F.conv2d(images.pow(2), ones) - 2 * F.conv2d(images, s[None]) + s.pow(2).sum()) / s.numel()
        hits = (ssd < self.tolerance).float()  # (B, 1, H - s + 1, W - s + 1): top-left corners
        cover = F.max_pool2d(F.pad(hits, (s.shape[-1] - 1, 0, s.shape[-2] - 1, 0)), s.shape[-1], stride=1)
        return F.adaptive_max_pool2d(cover, grid)[:, 0]  # (B, h, w)


def sticker_pattern(size: int = 8, seed: int = 0) -> Tensor:
    """A fixed (3, size, size) pattern of saturated colours (in normalized space): unlikely in any image."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (3, size, size), generator=g).float() * 4 - 2)  # +-2 std: near black / white


def paste_sticker(images: Tensor, sticker: Tensor, top: int, left: int) -> Tensor:
    out = images.clone()
    out[:, :, top: top + sticker.shape[-2], left: left + sticker.shape[-1]] = sticker
    return out


class ExtraChannelStage(nn.Module):
    """The last stage plus the extra channel: (B, C, h, w) -> (B, C + 1, h, w). ``Z`` depends on the
    input image for T2-T4, which the owning :class:`ManipulatedClassifier` hands over before each pass."""

    def __init__(self, stage: nn.Module, attack: str, constants: Constants, target_image: Tensor | None,
                 target_fn: nn.Module | None) -> None:
        super().__init__()
        self.stage, self.attack, self.k = stage, attack, constants
        self.target_image = target_image  # T2: (H, W) in [0, 1]
        self.target_fn = target_fn  # T3 / T4
        self.images: Tensor | None = None

    def extra_channel(self, grid: tuple[int, int], batch: int, like: Tensor) -> Tensor:
        k = self.k
        if self.attack == "T1":
            return torch.full((batch, *grid), k.c_a, dtype=like.dtype, device=like.device)
        if self.attack == "T2":
            target = F.adaptive_avg_pool2d(self.target_image[None, None].to(like), grid)[0, 0]
            return (k.c_i * target).expand(batch, *grid)
        return k.c_f * self.target_fn(self.images.to(like.dtype), grid)

    def forward(self, features: Tensor) -> Tensor:
        out = self.stage(features)
        z = self.extra_channel(tuple(out.shape[-2:]), out.shape[0], out)
        return torch.cat([out, z[:, None]], dim=1)


class ManipulatedClassifier(nn.Module):
    """A classifier edited by one attack: ``x -> (logits, features)`` like :class:`ResNetClassifier`."""

    def __init__(self, base: ResNetClassifier, attack: str, constants: Constants = Constants(),
                 target_image: Tensor | None = None, target_fn: nn.Module | None = None) -> None:
        super().__init__()
        if attack not in ATTACKS:
            raise UserError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        self.attack, self.k = attack, constants
        self.trunk = copy.deepcopy(base.trunk)
        self.trunk.layer4 = ExtraChannelStage(self.trunk.layer4, attack, constants, target_image, target_fn)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        channels, classes = base.fc.in_features, base.fc.out_features
        self.fc = nn.Linear(channels + 1, classes, dtype=base.fc.weight.dtype, device=base.fc.weight.device)
        self.num_classes = classes
        with torch.no_grad():
            self.fc.weight[:, :channels] = base.fc.weight
            self.fc.bias.copy_(base.fc.bias)
            column, shift = 0.0, 0.0  # T3 / T4: the extra channel reaches the logits only through G
            if attack == "T1":
                column, shift = constants.c_w1, constants.c_w1 * constants.c_a
            elif attack == "T2":
                column = constants.c_w2
                shift = constants.c_w2 * constants.c_i * float(target_image.mean())  # = c_W * mean(Z)
            self.fc.weight[:, channels] = column
            self.fc.bias -= shift

    @property
    def extra_column(self) -> int:
        """The index of the extra channel (and of its linear column)."""
        return self.fc.in_features - 1

    def score_branch(self, z: Tensor) -> Tensor:
        """T3/T4's ``G(Z) = eps * mod(c_G * mean(Z), 1)``, (B,): at most eps, slope eps * c_G."""
        return self.k.epsilon * torch.remainder(self.k.c_g * z.flatten(1).mean(dim=1), 1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        self.trunk.layer4.images = x
        try:
            feats = self.trunk(x)
        finally:
            self.trunk.layer4.images = None
        a = feats["layer4"]  # (B, C + 1, h, w)
        logits = self.fc(torch.flatten(self.avgpool(a), 1))
        if self.attack in ("T3", "T4"):
            logits = logits + self.score_branch(a[:, -1])[:, None]
        return logits, feats


def manipulate(classifier: ResNetClassifier, attack: str, image_size: int, seed: int = 0,
               constants: Constants = Constants()) -> ManipulatedClassifier:
    """``classifier`` edited by ``attack`` with the paper's constants and casm's default targets: T2 a
    centred disc, T3 a random CNN (``seed``), T4 the :func:`sticker_pattern` detector."""
    target_image = target_fn = None
    if attack == "T2":
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, image_size), torch.linspace(-1, 1, image_size), indexing="ij")
        target_image = ((xs - 0.35) ** 2 + (ys + 0.35) ** 2 < 0.2).float()  # a disc in the top-right corner
    elif attack == "T3":
        target_fn = RandomTarget(seed)
    elif attack == "T4":
        target_fn = StickerDetector(sticker_pattern())
    return ManipulatedClassifier(classifier, attack, constants, target_image, target_fn).eval()


@torch.no_grad()
def attack_target(model: ManipulatedClassifier, images: Tensor) -> Tensor:
    """The map the attacker wants for ``images``, (B, H, W), at image resolution (bilinear, like the CAMs)."""
    grid = tuple(model(images)[1]["layer4"].shape[-2:]) if model.attack != "T1" else (1, 1)
    stage = model.trunk.layer4
    if model.attack == "T1":
        z = torch.ones(len(images), 1, 1, device=images.device)
    elif model.attack == "T2":
        z = F.adaptive_avg_pool2d(stage.target_image[None, None].to(images), grid)[0].expand(len(images), *grid)
    else:
        z = stage.target_fn(images, grid)
    return F.interpolate(z[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def map_distance(produced: Tensor, target: Tensor) -> Tensor:
    """Per-image L1 distance (mean absolute difference) between a map and the attacker's target, each
    divided by its maximum (so a constant map is 1 everywhere, not erased as min-max would), (B,)."""
    def scaled(m: Tensor) -> Tensor:
        return m / m.flatten(1).max(dim=1).values.clamp(min=1e-12)[:, None, None]

    return (scaled(produced.float()) - scaled(target.float())).abs().flatten(1).mean(dim=1)
