"""Classifiers from outside casm: any ``nn.Module`` an importable builder makes (docs/own_classifier.md).

The same spec serves two roles: ``model.classifier`` (the classifier a masker is trained against, the
user's own model) and evaluation judges. A builder is ``package.module.function``, or
``package.module:attribute.path`` for a classmethod such as ``EfficientNet.from_name``; it is called with
``kwargs``. Weights come from a state-dict file read safely (``weights_only=True`` or safetensors), or,
for torchvision builders, by weights name (``IMAGENET1K_V2``): torchvision then reads its download cache
or downloads, and without network that fails in one line naming the file to pass instead.
The model sees images as casm's own classifiers do (normalized with the ImageNet mean and std) and may
return logits or a tuple whose first element is the logits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from casm.checkpoints import read_weights
from casm.errors import UserError
from casm.models.builders import import_builder
from casm.models.modes import evaluation_mode
from casm.models.outputs import logits_of

_WEIGHTS_NAME = re.compile(r"[A-Z][A-Z0-9_]*")  # torchvision's: DEFAULT, IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1
_DOWNLOADING_KWARGS = ("weights", "pretrained", "weights_backbone")  # torchvision's and timm's


def read_class_names(path: str | Path, who: str = "model.classifier") -> list[str]:
    """One class name per line, in the order of the model's outputs (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{who}: class list not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"{who}: {path} names a class twice")
    return names


def is_weights_name(weights: str) -> bool:
    """A torchvision weights name (``IMAGENET1K_V2``), not a file."""
    return bool(_WEIGHTS_NAME.fullmatch(weights)) and not Path(weights).exists()


def named_weights(builder: Callable[..., nn.Module], name: str, who: str) -> Any:
    """The torchvision weights enum member ``name`` of ``builder`` (its url and class names)."""
    from torchvision.models import get_model_weights  # deferred: only weights names need torchvision's registry

    try:
        enum = get_model_weights(builder)
    except (ValueError, KeyError) as err:
        raise UserError(f"{who}.weights={name}: weights names are torchvision's, and "
                        f"{getattr(builder, '__name__', builder)} is not a torchvision model builder; pass a "
                        f"state-dict file instead") from err
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise UserError(f"{who}.weights={name} is not one of {', '.join(enum.__members__)} "
                        f"({enum.__name__})") from None


def _load_named(builder: Callable[..., nn.Module], spec: str, name: str, kwargs: dict, who: str) -> nn.Module:
    weights = named_weights(builder, name, who)
    try:
        return builder(weights=weights, **kwargs)
    except OSError as err:  # URLError, socket errors, a read-only cache
        file = weights.url.rsplit("/", 1)[-1]
        raise UserError(f"{who}.weights={name}: {spec} could not fetch {weights.url} ({err}); on a machine with "
                        f"network torchvision keeps it as $TORCH_HOME/hub/checkpoints/{file} "
                        f"(~/.cache/torch/...): copy that file here and pass {who}.weights=PATH/{file}") from err
    except ValueError as err:  # e.g. num_classes that contradicts the weights
        raise UserError(f"{who}.weights={name} with kwargs {kwargs}: {err}") from err


def build_outside(spec: str, weights: str | None, kwargs: dict | None, who: str = "model.classifier",
                  load_weights: bool = True, trusted: Iterable[str] | None = None) -> nn.Module:
    """``builder(**kwargs)`` with its weights (a file, or a torchvision weights name). ``load_weights``
    False builds the bare architecture (a checkpoint supplies the weights: a builder's own ``weights`` or
    ``pretrained`` keyword, which would download, is left at its default). ``trusted``: the spec was read
    from a file, and its module must be one of these (:mod:`casm.models.builders`)."""
    builder = import_builder(spec, who, trusted)
    kwargs = dict(kwargs or {})
    if not load_weights:
        kwargs = {k: v for k, v in kwargs.items() if k not in _DOWNLOADING_KWARGS}
    if load_weights and weights and is_weights_name(weights):
        model = _load_named(builder, spec, weights, kwargs, who)
    else:
        try:
            model = builder(**kwargs)
        except TypeError as err:  # kwargs the builder does not take (a config typo, or a crafted file)
            raise UserError(f"{who}: {spec}(**{kwargs}) failed: {err}") from err
    if not isinstance(model, nn.Module):
        raise UserError(f"{who}: builder {spec!r} returned a {type(model).__name__}, not an nn.Module")
    if load_weights and weights and not is_weights_name(weights):
        state = outside_state(read_weights(weights))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise UserError(f"{who}: {weights} does not fit {spec}({kwargs or ''}): "
                            f"{' '.join(first[:3])[:300]}") from err
    return model


def outside_state(state: dict) -> dict:
    """The builder's weights in a file: a plain state dict (a ``module.`` prefix from DDP dropped), or a casm
    checkpoint of a run whose classifier is this builder (its ``classifier.model.*`` weights), so a
    classifier casm trained can be explained frozen, or judge, without converting its checkpoint."""
    prefix = "classifier.model."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k.removeprefix("module."): v for k, v in state.items()}


def count_outputs(model: nn.Module, image_size: int, who: str = "model.classifier") -> int:
    """The number of logits, from one forward pass on a blank image (which also shows that the model runs
    on casm's input); every module's train/eval flag is left as it was."""
    with evaluation_mode(model), torch.no_grad():
        output = logits_of(model(torch.zeros(1, 3, image_size, image_size)))
    if output.dim() != 2:
        raise UserError(f"{who}: the model returns outputs of shape {tuple(output.shape)}, not (batch, classes)")
    return output.shape[1]


class OutsideClassifier(nn.Module):
    """A classifier from outside casm answering like casm's own: ``(logits, features)``, over all its outputs.

    ``labels`` maps the data's class indices to the model's outputs (an ImageNet model explaining photos of 5
    of its classes: the 5 output indices), so the masker is scored by exactly the user's model, over every
    class it knows. It is a buffer, saved with the weights. The features are empty: a masker trained against
    this classifier reads its own encoder (``masker.encoder=separate``)."""

    def __init__(self, model: nn.Module, num_classes: int, labels: list[int] | None = None,
                 data_classes: int | None = None) -> None:
        super().__init__()
        self.model, self.num_classes = model, num_classes
        mapped = labels if labels is not None else range(data_classes if data_classes is not None else num_classes)
        self.register_buffer("labels", torch.tensor(mapped, dtype=torch.long))

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return logits_of(self.model(x)), {}

    def map_labels(self, y: Tensor) -> Tensor:
        """The data's labels as this model's output indices."""
        return self.labels[y]


def weights_class_names(spec: Any, who: str = "model.classifier") -> list[str] | None:
    """The output class names: ``classes`` (a file), else those torchvision's named weights carry."""
    if spec.classes:
        return read_class_names(spec.classes, who)
    if spec.weights and is_weights_name(spec.weights):
        return list(named_weights(import_builder(spec.builder, who), spec.weights, who).meta.get("categories") or
                    []) or None
    return None


def outside_classifier(spec: Any, num_classes: int, class_names: list[str] | None, image_size: int,
                       load_weights: bool = True, who: str = "model.classifier",
                       trusted: Iterable[str] | None = None) -> tuple[OutsideClassifier, list[str]]:
    """``spec`` (``model.classifier``) as the classifier of a run on data with ``num_classes`` classes named
    ``class_names``, and the names of its outputs. The data's classes are matched to the model's outputs by
    name when the model has its own (a class list), else the model must have one output per class, in the
    data's order. ``load_weights`` False: the bare architecture, its weights and label map to come from a
    checkpoint; ``trusted``: as :func:`build_outside`'s."""
    model = build_outside(spec.builder, spec.weights, dict(spec.kwargs or {}), who, load_weights, trusted)
    outputs = count_outputs(model, image_size, who)
    data = class_names if class_names is not None else [str(k) for k in range(num_classes)]
    if not load_weights:
        return OutsideClassifier(model, outputs, data_classes=num_classes), data
    names = weights_class_names(spec, who)
    if names is None:
        if outputs != num_classes:
            raise UserError(f"{who}: {spec.builder} has {outputs} outputs and the data {num_classes} classes; give "
                            f"{who}.classes=FILE (its class names, one per line in output order) so the data's "
                            f"classes can be found among them")
        return OutsideClassifier(model, outputs), data
    if len(names) != outputs:
        raise UserError(f"{who}: {spec.classes or spec.weights} names {len(names)} classes, {spec.builder} has "
                        f"{outputs} outputs")
    missing = [c for c in data if c not in names]
    if missing:
        raise UserError(f"{who}: the data's classes {missing[:5]}{' ...' if len(missing) > 5 else ''} are not among "
                        f"the classifier's {len(names)} class names (e.g. {names[:3]}); name the data's class folders "
                        f"as the classifier names its classes")
    return OutsideClassifier(model, outputs, [names.index(c) for c in data]), names
