"""Post-hoc baselines for any classifier: the CAM family (CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM,
LayerCAM, ShapleyCAM, Score-CAM, Ablation-CAM, EigenCAM), the black-box RISE and Captum's Integrated Gradients."""

from casm.baselines.activation import CAM, AblationCAM, EigenCAM, ScoreCAM
from casm.baselines.attribution import IntegratedGradients
from casm.baselines.base import CAMMethod, LogitsOnly, SaliencyMethod, default_target_layer, logits_of
from casm.baselines.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ShapleyCAM, XGradCAM
from casm.baselines.perturbation import RISE

BASELINES: dict[str, type[SaliencyMethod]] = {m.name: m for m in (
    CAM, GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, ShapleyCAM, ScoreCAM, AblationCAM, EigenCAM, RISE,
    IntegratedGradients)}
# one forward pass per (image, channel) or (image, mask): capped by max_images_slow in the evaluation
PERTURBATION_METHODS = ("scorecam", "ablationcam", "rise")

__all__ = ["BASELINES", "CAM", "PERTURBATION_METHODS", "AblationCAM", "CAMMethod", "EigenCAM", "GradCAM",
           "GradCAMPlusPlus", "HiResCAM", "IntegratedGradients", "LayerCAM", "LogitsOnly", "RISE", "SaliencyMethod",
           "ScoreCAM", "ShapleyCAM", "XGradCAM", "default_target_layer", "logits_of"]
