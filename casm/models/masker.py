"""The masker: an encoder (its own ResNet trunk, or the classifier's, shared) and a mask head."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from casm.models.heads import MaskHead, SigmoidHead
from casm.models.resnet import ResNetTrunk


class Masker(nn.Module):
    """``masker(x, features=None) -> mask`` of shape (B, 1, H, W) in [0, 1].

    With ``encoder=None`` the masker is *shared*: it reads the classifier's features, which the
    caller passes in and which are detached here, so masker gradients never reach the classifier
    (the best variant in the CASM paper). With its own ``encoder`` it computes features itself.
    """

    def __init__(self, head: MaskHead, encoder: ResNetTrunk | None = None) -> None:
        super().__init__()
        self.head = head
        self.encoder = encoder

    @property
    def shared(self) -> bool:
        return self.encoder is None

    def _features(self, x: Tensor, features: dict[str, Tensor] | None) -> dict[str, Tensor]:
        if self.encoder is not None:
            return self.encoder(x)
        if features is None:
            raise ValueError("a shared-encoder masker needs the classifier's features")
        return {name: f.detach() for name, f in features.items()}

    def forward(self, x: Tensor, features: dict[str, Tensor] | None = None) -> Tensor:
        return self.head(self._features(x, features), x)

    def mask_and_logits(self, x: Tensor, features: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The mask and the logits it is the sigmoid of (heads of :class:`SigmoidHead` only)."""
        if not isinstance(self.head, SigmoidHead):
            raise TypeError(f"the {type(self.head).__name__} head has no logits: its mask is not a sigmoid")
        return self.head.mask_and_logits(self._features(x, features), x)

    def standalone(self, classifier_trunk: ResNetTrunk | None) -> "Masker":
        """A self-contained copy that carries its own encoder weights (a copy of the classifier's
        trunk when shared), so it keeps working whatever later happens to the classifier."""
        encoder = self.encoder if self.encoder is not None else classifier_trunk
        return Masker(copy.deepcopy(self.head), copy.deepcopy(encoder))
