"""Post-hoc CAM baselines for any classifier: CAM, Grad-CAM, Grad-CAM++, Score-CAM."""

from casm.baselines.activation import CAM, ScoreCAM
from casm.baselines.base import CAMMethod, LogitsOnly, default_target_layer, logits_of
from casm.baselines.gradient import GradCAM, GradCAMPlusPlus

BASELINES: dict[str, type[CAMMethod]] = {m.name: m for m in (CAM, GradCAM, GradCAMPlusPlus, ScoreCAM)}

__all__ = ["BASELINES", "CAM", "CAMMethod", "GradCAM", "GradCAMPlusPlus", "LogitsOnly", "ScoreCAM",
           "default_target_layer", "logits_of"]
