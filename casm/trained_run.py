"""A trained run, read without Lightning: its checkpoint as the classifier, the masker, the config and the
class names. Evaluation, export, sanity checks and the experiments read runs here; training builds its
networks with the same :func:`build_models`, so a run is read back exactly as it was built. The run's
folder layout is :func:`casm.checkpoints.run_folder`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig
from torch import nn

from casm.checkpoints import read_checkpoint, run_folder
from casm.config import with_defaults
from casm.errors import UserError, shorten
from casm.models import Masker, ResNetClassifier, ResNetTrunk, build_head
from casm.models.builders import trusted_modules
from casm.models.feature_encoder import NamedFeatureEncoder
from casm.models.manipulation import manipulate
from casm.models.outside import build_outside, outside_classifier


def build_models(cfg: DictConfig, num_classes: int, class_names: list[str] | None = None,
                 outside_weights: bool = True, trusted: Iterable[str] | None = None
                 ) -> tuple[nn.Module, Masker, list[str] | None]:
    """The classifier (casm's ResNet, or ``model.classifier`` from outside casm), the masker (its encoder the
    classifier's trunk, its own ResNet, or ``masker.encoder_model``), and the names of the classifier's outputs
    (the data's classes for casm's own). ``outside_weights`` False builds outside networks bare (a checkpoint
    holds their weights); ``trusted``: ``cfg`` was read from a file, and outside builders must come from these
    modules (:mod:`casm.models.builders`)."""
    output_names = class_names
    if cfg.model.classifier is not None:
        classifier, output_names = outside_classifier(cfg.model.classifier, num_classes, class_names,
                                                      cfg.data.image_size, load_weights=outside_weights,
                                                      trusted=trusted)
    else:
        classifier = ResNetClassifier(cfg.model.arch, num_classes, cfg.model.width)
        if cfg.model.pretrained:
            classifier.load_weights(cfg.model.pretrained)
    encoder = None
    if cfg.masker.encoder_model is not None:  # another network, its named modules' outputs as the features
        spec = cfg.masker.encoder_model
        network = build_outside(spec.builder, spec.weights, dict(spec.kwargs or {}), "masker.encoder_model",
                                load_weights=outside_weights, trusted=trusted)
        encoder = NamedFeatureEncoder(network, dict(spec.layers), cfg.data.image_size)
    elif cfg.masker.encoder == "separate":
        encoder = ResNetTrunk(cfg.model.arch, cfg.model.width)
        if cfg.masker.encoder_pretrained:
            donor = ResNetClassifier(cfg.model.arch, num_classes, cfg.model.width)
            donor.load_weights(cfg.masker.encoder_pretrained)
            encoder.load_state_dict(donor.trunk.state_dict())
    channels = (encoder or classifier.trunk).channels  # an outside classifier needs a separate encoder (config)
    masker = Masker(build_head(cfg.masker.head, channels, cfg.masker.hidden,
                               cfg.masker.get("feature_layer")), encoder)
    if cfg.model.manipulation:  # the sanity check "casm under attack" (docs/sanity.md)
        # in train mode like the unattacked classifier; on_train_epoch_start freezes both alike
        classifier = manipulate(classifier, cfg.model.manipulation, cfg.data.image_size, seed=cfg.seed).train()
    return classifier, masker, output_names


@dataclass
class TrainedRun:
    """A training checkpoint's networks (eval mode) and settings."""

    checkpoint: Path
    classifier: nn.Module  # casm's ResNetClassifier, or an OutsideClassifier (model.classifier)
    masker: Masker
    config: dict  # the config it was trained with, as saved, its pretrained-weight paths dropped
    cfg: DictConfig  # the same with today's defaults for keys an earlier casm did not have
    class_names: list[str] | None  # of the classifier's outputs (an outside classifier's own, e.g. ImageNet's)
    masker_steps: int | None = None  # optimizer steps the masker took (0: a classifier trained alone); None: unknown

    def require_trained_masker(self, purpose: str) -> None:
        """Refuse to use a masker that never took a step (``casm.warmup_epochs`` >= ``trainer.max_epochs``)."""
        if self.masker_steps == 0:
            raise UserError(f"{self.checkpoint}: its masker was never trained (the run trained its classifier alone: "
                            f"casm.warmup_epochs >= trainer.max_epochs), so it cannot {purpose}; use it as a judge "
                            f"or a baseline classifier, or train a masker")

    @property
    def folder(self) -> Path:
        return run_folder(self.checkpoint)

    def to(self, device) -> TrainedRun:
        self.classifier.to(device)
        self.masker.to(device)
        return self


def read_run(checkpoint: str | Path, trusted_builders: Iterable[str] = ()) -> TrainedRun:
    """The trained run a casm training checkpoint holds. Pretrained-weight paths are dropped (the
    checkpoint holds the weights); the masker is the one the run saved (its average, when it kept one).
    A checkpoint may come from anyone: an outside network is rebuilt only from torchvision or a module
    in ``trusted_builders`` (or the environment's, :func:`casm.models.builders.trusted_modules`)."""
    ckpt = read_checkpoint(checkpoint)
    hp = ckpt.get("hyper_parameters", {})
    if "config" not in hp or not any(k.startswith("masker.") for k in ckpt.get("state_dict", {})):
        raise UserError(f"{checkpoint}: not a casm training checkpoint with a masker; give the checkpoint a "
                        f"casm training run wrote (RUN/checkpoints/last.ckpt)")
    config = dict(hp["config"])
    config["model"] = dict(config["model"], pretrained=None)
    if config["model"].get("classifier"):  # the checkpoint holds the outside classifier's weights and output map
        config["model"]["classifier"] = dict(config["model"]["classifier"], weights=None, classes=None)
    if config["masker"].get("encoder_model"):  # ... and the named encoder's
        config["masker"]["encoder_model"] = dict(config["masker"]["encoder_model"], weights=None)
    config["masker"] = dict(config["masker"], encoder_pretrained=None)
    cfg = with_defaults(config)  # a checkpoint of an earlier casm lacks the newer keys
    try:
        classifier, masker, _ = build_models(cfg, hp["num_classes"], outside_weights=False,
                                             trusted=trusted_modules(trusted_builders))
    except UserError as err:
        raise UserError(f"{checkpoint}: {err}") from err
    networks = nn.Module()
    networks.classifier, networks.masker = classifier, masker
    try:
        networks.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:  # e.g. a head whose layout changed between casm versions
        raise UserError(f"{checkpoint}: its weights do not fit a {cfg.model.arch} with the {cfg.masker.head} head of "
                        f"this casm version ({shorten(err)})") from err
    names = hp.get("classifier_class_names") or hp.get("class_names")  # the first: an outside classifier's outputs
    steps = ckpt.get("casm_state", {}).get("casm_step")
    return TrainedRun(Path(checkpoint), classifier.eval(), masker.eval(), config, cfg, list(names) if names else None,
                      None if steps is None else int(steps))
