"""What an evaluation reads besides the masker: casm classifiers and LFI-CAM models from checkpoints,
judges from outside casm, and the mapping of the evaluated data's labels to each model's classes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from casm.checkpoints import read_checkpoint
from casm.config import ConfigError, with_defaults
from casm.errors import UserError
from casm.models import ResNetClassifier
from casm.models.lficam import LFICAMClassifier
from casm.models.outside import OutsideClassifier, build_outside, count_outputs, read_class_names


@dataclass
class KnownClasses:
    """A classifier the evaluation uses, with the map from the data's labels to its logits: labels are
    matched by class *name*, and a class the classifier was never trained on maps to -1, so no logit
    is ever indexed with a label the classifier does not have."""

    model: nn.Module
    label_map: Tensor  # (number of evaluated classes,) logit index or -1

    @classmethod
    def match(cls, model: nn.Module, model_classes: list[str] | None, data_classes: list[str],
              who: str) -> "KnownClasses":
        if model_classes is None:  # a checkpoint from before casm saved class names
            if model.num_classes != len(data_classes):
                raise UserError(f"{who} has {model.num_classes} outputs and no class names, the data "
                                f"{len(data_classes)} classes; evaluate it on the classes it was trained on "
                                f"(a judge from outside casm: name its outputs with judges[i].classes)")
            model_classes = list(data_classes)
        index = {c: i for i, c in enumerate(model_classes)}
        return cls(model, torch.tensor([index.get(c, -1) for c in data_classes]))

    def to(self, device: torch.device) -> "KnownClasses":
        return KnownClasses(self.model.to(device), self.label_map.to(device))

    def labels(self, y: Tensor) -> Tensor:
        """The data's labels as this classifier's logit indices (-1: a class it never saw)."""
        return self.label_map[y]

    @property
    def known_count(self) -> int:
        return int((self.label_map >= 0).sum())


def _class_names(ckpt: dict) -> list[str] | None:
    names = ckpt.get("hyper_parameters", {}).get("class_names")
    return list(names) if names else None


def load_lficam(checkpoint: str | Path) -> tuple[nn.Module, list[str] | None]:
    """The LFI-CAM classifier of a ``mode=lficam`` training checkpoint (eval mode) and its class names."""
    ckpt = read_checkpoint(checkpoint)
    hp = ckpt.get("hyper_parameters", {})
    if hp.get("config", {}).get("mode") != "lficam":
        raise UserError(f"lficam_checkpoint={checkpoint}: not a mode=lficam checkpoint; train one with "
                        f"python train.py --config configs/lficam.yaml")
    cfg = with_defaults(dict(hp["config"], model=dict(hp["config"]["model"], pretrained=None)))
    model = LFICAMClassifier(cfg.model.arch, hp["num_classes"], cfg.model.width, cfg.masker.hidden)
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
    return model.eval(), _class_names(ckpt)


def load_foreign_judge(spec: DictConfig, index: int, image_size: int, taken: set[str] = frozenset()
                       ) -> tuple[str, nn.Module, list[str] | None]:
    """A judge from ``judges[index]``, built like ``model.classifier`` (:mod:`casm.models.outside`; it sees the
    images as casm's classifiers do, at the evaluation size), in eval mode: unique name, model, class names."""
    for key in ("builder", "weights"):
        if OmegaConf.is_missing(spec, key):
            raise ConfigError(f"judges[{index}].{key} is missing: a judge needs builder (e.g. torchvision.models."
                              f"resnet50) and weights (a state-dict file)")
    model = build_outside(spec.builder, spec.weights, OmegaConf.to_container(spec.kwargs), who="judges").eval()
    outputs = count_outputs(model, image_size, who="judges")
    classes = read_class_names(spec.classes, who=f"judges[{index}]") if spec.classes else None
    if classes is not None and len(classes) != outputs:
        raise UserError(f"judges[{index}]: {spec.classes} names {len(classes)} classes, {spec.builder} has "
                        f"{outputs} outputs")
    return unique_name(spec.name or spec.builder.replace(":", ".").rsplit(".", 1)[-1], taken), \
        OutsideClassifier(model, outputs), classes


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... when another classifier already has it."""
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def load_classifier(checkpoint: str | Path, taken: set[str] = frozenset()
                    ) -> tuple[str, ResNetClassifier, list[str] | None]:
    """A classifier from a casm training checkpoint (its own architecture and classes), for the judges /
    baselines, with a readable unique name: its run's ``logging.name`` (checkpoint files are all
    last.ckpt), numbered when two runs share a name; and its class names."""
    path = Path(checkpoint).resolve()
    stat = path.stat() if path.is_file() else None
    base, classifier, classes = _read_classifier(str(path), stat and (stat.st_mtime_ns, stat.st_size), checkpoint)
    return unique_name(base, taken), classifier, classes


@lru_cache(maxsize=8)
def _read_classifier(path: str, stamp: tuple[int, int] | None, shown: str | Path
                     ) -> tuple[str, ResNetClassifier, list[str] | None]:
    """Read once per process while the file is unchanged (``stamp``): an experiment that evaluates many
    models against the same judge (the unseen protocol: every model on every subset) loads it once.
    The classifier is only ever used in eval mode, never trained, so sharing the object is safe."""
    ckpt = read_checkpoint(shown)
    hp = ckpt.get("hyper_parameters", {})
    config = hp.get("config", {})
    if "model" not in config or "num_classes" not in hp:
        raise UserError(f"{shown}: not a casm checkpoint; train a classifier with train.py (see README)")
    classifier = ResNetClassifier(config["model"]["arch"], hp["num_classes"], config["model"]["width"])
    classifier.load_state_dict_from(ckpt, shown)
    base = config.get("logging", {}).get("name") or Path(shown).stem
    return base, classifier.eval(), _class_names(ckpt)
