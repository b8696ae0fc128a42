"""Every mask head by its ``masker.head`` name, and the one place that builds them (the decoders of
heads.py and the attention heads of attention.py; a new head registers itself here)."""

from __future__ import annotations

from typing import Callable

from casm.errors import UserError
from casm.models.attention import ABNHead, LFIHead
from casm.models.heads import CasmeDecoder, DeconvDecoder, MaskHead, SigmoidHead
from casm.models.resnet import FEATURE_NAMES

HeadBuilder = Callable[..., MaskHead]
HEADS: dict[str, HeadBuilder] = {"casme": CasmeDecoder, "deconv": DeconvDecoder, "lfi": LFIHead, "abn": ABNHead}
# heads whose mask is the sigmoid of logits (casm.mask_logit_bound needs them)
SIGMOID_HEADS = tuple(name for name, head in HEADS.items() if isinstance(head, type) and issubclass(head, SigmoidHead))


def check_feature_layer(head: str, layer: str | None) -> None:
    """Refuse a ``masker.feature_layer`` that ``head`` cannot read. Heads that read one feature map
    declare it as ``default_feature_layer``; the decoders read every layer and take none."""
    if layer is None:
        return
    if layer not in FEATURE_NAMES:
        raise UserError(f"masker.feature_layer={layer!r} is not one of {', '.join(FEATURE_NAMES)}")
    if getattr(HEADS[head], "default_feature_layer", None) is None:
        readers = [name for name, h in HEADS.items() if getattr(h, "default_feature_layer", None)]
        raise UserError(f"masker.feature_layer={layer!r} applies to the heads that read one layer "
                        f"({', '.join(readers)}), not the decoders: the {head} decoder reads every layer")


def build_head(name: str, channels: dict[str, int], hidden: int = 64, feature_layer: str | None = None) -> MaskHead:
    """``feature_layer`` (the attention heads only): the one feature map they read; None = the head's own."""
    if name not in HEADS:
        raise UserError(f"masker.head={name!r} is not a known head; choose one of {sorted(HEADS)}")
    check_feature_layer(name, feature_layer)
    if feature_layer is None:
        return HEADS[name](channels, hidden=hidden)
    return HEADS[name](channels, hidden=hidden, feature_layer=feature_layer)
