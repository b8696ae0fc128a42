"""Networks: ResNet classifiers with multi-scale features, mask heads and the masker."""

from casm.models.head_registry import HEADS, build_head
from casm.models.heads import CasmeDecoder, DeconvDecoder, MaskHead
from casm.models.masker import Masker
from casm.models.resnet import FEATURE_NAMES, ResNetClassifier, ResNetTrunk

__all__ = ["HEADS", "CasmeDecoder", "DeconvDecoder", "MaskHead", "build_head", "Masker", "FEATURE_NAMES",
           "ResNetClassifier", "ResNetTrunk"]
