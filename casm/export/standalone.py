"""Standalone maskers: export a trained masker from a training checkpoint, and load it back.

An export is a folder with two files:

* ``masker.safetensors``: the masker's weights, encoder included (a copy of the classifier's trunk
  when the encoder was shared), so it keeps working whatever later happens to the classifier.
  safetensors holds tensors only: loading a file cannot run code.
* With ``--with-classifier`` the same weights file also holds the classifier (keys ``classifier.*``),
  and the manifest says how to rebuild it: the export then returns logits and mask in one forward
  pass (:func:`load_explainer`; ``explainer.onnx`` with ``--onnx``). A classifier from outside casm is
  rebuilt by importing its builder, i.e. by running code the manifest names: only torchvision's
  builders are trusted unless the caller names the module (``trusted_builders``).
* ``masker.json``: everything needed to rebuild and feed it (architecture, head, input size,
  normalization, class names, casm version), the weights' SHA-256, so a tampered or truncated
  weights file fails cleanly, and its own SHA-256 (format 2), so an edited manifest (say, another
  ``image_size``, which would silently change every mask) fails too. Format 1, which had no such
  checksum, is refused: claiming it would otherwise let any edit through.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save
from torch import Tensor, nn

import casm
from casm.checkpoints import write_bytes_atomically, write_text_atomically
from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
from casm.data.transforms import eval_resize
from casm.errors import ExportError, UserError
from casm.export.onnx import export_onnx, require_onnx
from casm.models import Masker, ResNetClassifier, ResNetTrunk, build_head
from casm.models.builders import trusted_modules
from casm.models.feature_encoder import NamedFeatureEncoder
from casm.models.outside import OutsideClassifier, build_outside
from casm.trained_run import TrainedRun, read_run

WEIGHTS_FILE = "masker.safetensors"
MANIFEST_FILE = "masker.json"
GRAPH_FILES = ("masker.onnx", "explainer.onnx")  # --onnx: the masker's graph, or (--with-classifier) the explainer's
FORMAT = "casm-masker"
FORMAT_VERSION = 2  # 2: the manifest carries its own SHA-256; 1 (no checksum) is refused
MAX_IMAGE_SIZE = 4096  # a masker input side beyond this is a corrupt manifest, not a model (memory grows with it)


@dataclass
class MaskerManifest:
    arch: str
    width: int
    head: str
    hidden: int
    image_size: int
    resize: int  # the shorter side the run's evaluation resized to before its centre crop (explain resizes whole)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    classes: list[str] = field(default_factory=list)
    feature_layer: Optional[str] = None  # lfi / abn heads: the layer they read (None: the head's default)
    classifier: Optional[dict] = None  # --with-classifier: how to rebuild it (classifier_recipe); None: masker only
    encoder: Optional[dict] = None  # masker.encoder_model: {builder, kwargs, layers}; None: casm's ResNet trunk
    casm_version: str = casm.__version__
    source_checkpoint: str = ""
    weights_sha256: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    manifest_sha256: str = ""  # of every other field (manifest_digest)


def manifest_digest(fields: dict) -> str:
    """SHA-256 of a manifest's canonical JSON, its own checksum field left out."""
    body = {k: v for k, v in fields.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def read_manifest(path: Path) -> MaskerManifest:
    """Parse and check ``masker.json``; every fault is an :class:`ExportError` naming the field."""
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ExportError(f"{path}: expected a JSON object, got a {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise ExportError(f"{path}: format is {raw.get('format')!r}, not {FORMAT!r}: not a casm masker manifest")
    version = raw.get("format_version")
    if version == 1:  # a format-1 manifest has no checksum: "format_version": 1 would let any edit load silently
        raise ExportError(f"{path}: format_version 1 (an export from before manifest checksums) is no longer read, "
                          f"since an edited manifest could not be told from a real one; export the checkpoint again")
    if version != FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {version!r}; this casm reads {FORMAT_VERSION} "
                          f"(an export from a newer casm? upgrade casm, or export again with this one)")
    if raw.get("manifest_sha256") != manifest_digest(raw):
        raise ExportError(f"{path}: edited after export (its manifest_sha256 does not match its contents); "
                          f"export the checkpoint again")
    if not (isinstance(raw.get("weights_sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", raw["weights_sha256"])):
        raise ExportError(f"{path}: weights_sha256 is missing or malformed, so corrupted weights could not be "
                          f"detected; export the checkpoint again")
    for key, high in (("image_size", MAX_IMAGE_SIZE), ("resize", 2 * MAX_IMAGE_SIZE), ("width", 1024),
                      ("hidden", 8192)):
        if not _is_int(raw.get(key), 1, high):
            raise ExportError(f"{path}: {key}={raw.get(key)!r} must be an integer from 1 to {high}")
    for key in ("mean", "std"):
        values = raw.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise ExportError(f"{path}: {key}={values!r} must be three finite numbers (R, G, B)")
    if any(v <= 0 for v in raw["std"]):
        raise ExportError(f"{path}: std={raw['std']} must be positive (images are divided by it)")
    try:
        return MaskerManifest(**raw)
    except TypeError as err:
        raise ExportError(f"{path}: not a valid masker manifest ({err})") from err


def classifier_recipe(run: TrainedRun) -> dict:
    """How an export rebuilds the run's classifier (its weights travel in the weights file)."""
    spec = run.cfg.model.classifier
    if spec is None:
        return {"kind": "casm", "arch": run.cfg.model.arch, "width": run.cfg.model.width,
                "num_classes": run.classifier.num_classes, "shares_encoder": run.masker.shared}
    return {"kind": "outside", "builder": spec.builder, "kwargs": OmegaConf.to_container(spec.kwargs),
            "num_classes": run.classifier.num_classes, "data_classes": len(run.classifier.labels),
            "shares_encoder": False}


def _rebuild(recipe: dict, what: str, where: Path | str, trusted_builders: tuple[str, ...]) -> nn.Module:
    """The bare outside network a manifest's recipe names: rebuilding runs its builder's code, so only a
    builder of torchvision or of a trusted module, under the walk rule (:mod:`casm.models.builders`)."""
    try:
        return build_outside(recipe["builder"], None, recipe["kwargs"], who=f"{where}: {what}", load_weights=False,
                             trusted=trusted_modules(trusted_builders))
    except UserError as err:
        raise ExportError(str(err)) from err


def _is_recipe(recipe: object, *keys: str) -> bool:
    return isinstance(recipe, dict) and isinstance(recipe.get("builder"), str) and isinstance(
        recipe.get("kwargs"), dict) and all(isinstance(recipe.get(k), dict) for k in keys)


def build_exported_classifier(recipe: dict, where: Path | str, trusted_builders: tuple[str, ...] = ()) -> nn.Module:
    """The bare classifier a manifest describes; an outside builder only from a trusted module."""
    kind = recipe.get("kind") if isinstance(recipe, dict) else None
    if kind == "casm" and isinstance(recipe.get("arch"), str) and _is_int(recipe.get("width"), 1, 1024) \
            and _is_int(recipe.get("num_classes"), 1, 1_000_000):
        try:
            return ResNetClassifier(recipe["arch"], recipe["num_classes"], recipe["width"])
        except UserError as err:
            raise ExportError(f"{where}: classifier: {err}") from err
    if kind != "outside" or not _is_recipe(recipe):
        raise ExportError(f"{where}: classifier={recipe!r} is not a classifier recipe this casm can rebuild")
    return OutsideClassifier(_rebuild(recipe, "classifier", where, trusted_builders), recipe["num_classes"],
                             data_classes=recipe.get("data_classes"))


def build_masker(manifest: MaskerManifest, where: Path | str, trusted_builders: tuple[str, ...] = ()) -> Masker:
    """The bare masker a manifest describes: its head over casm's ResNet trunk, or over the network
    ``manifest.encoder`` names (trusted only)."""
    recipe = manifest.encoder
    if recipe is None:
        encoder = ResNetTrunk(manifest.arch, manifest.width)
    elif not _is_recipe(recipe, "layers"):
        raise ExportError(f"{where}: encoder={recipe!r} is not an encoder recipe this casm can rebuild")
    else:
        encoder = NamedFeatureEncoder(_rebuild(recipe, "encoder", where, trusted_builders), recipe["layers"],
                                      manifest.image_size)
    return Masker(build_head(manifest.head, encoder.channels, manifest.hidden, manifest.feature_layer), encoder)


class StandaloneMasker(nn.Module):
    """``masker(images) -> masks``: normalized (B, 3, H, W) -> (B, 1, H, W) in [0, 1]. No gradients: one
    forward pass. ``manifest`` says how images must be prepared. With a ``classifier`` (an export made
    ``--with-classifier``, loaded by :func:`load_explainer`), :meth:`logits_and_masks` gives the
    classifier's logits and the mask of the same pass."""

    def __init__(self, manifest: MaskerManifest, masker: Masker, classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.manifest = manifest
        self.masker = masker  # with its own encoder (Masker.standalone, or build_masker)
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.masker(images)

    def logits_and_masks(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.classifier is None:
            raise ExportError("this masker was loaded without a classifier: export with --with-classifier and load "
                              "with casm.load_explainer")
        logits, features = self.classifier(images)
        if self.manifest.classifier and self.manifest.classifier.get("shares_encoder"):
            return logits, self.masker.head(features, images)  # the encoder is the classifier's trunk: run it once
        return logits, self.masker(images)


class LogitsAndMasks(nn.Module):
    """The graph ONNX export traces: images -> (logits, masks)."""

    def __init__(self, model: StandaloneMasker) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.logits_and_masks(images)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def masker_from_checkpoint(checkpoint_path: str | Path, with_classifier: bool = False,
                           trusted_builders: tuple[str, ...] = ()) -> StandaloneMasker:
    """Rebuild the trained masker of a casm training checkpoint as a standalone module (eval mode), with
    the run's classifier when asked (an outside network only from a trusted module, as :func:`read_run`)."""
    try:
        run = read_run(checkpoint_path, trusted_builders)
        run.require_trained_masker("be exported")
    except ValueError as err:
        raise ExportError(str(err)) from err
    cfg = run.cfg
    manifest = MaskerManifest(
        arch=cfg.model.arch, width=cfg.model.width, head=cfg.masker.head, hidden=cfg.masker.hidden,
        feature_layer=cfg.masker.get("feature_layer"), image_size=cfg.data.image_size, resize=eval_resize(cfg.data),
        classes=list(run.class_names or []), source_checkpoint=str(checkpoint_path),
        classifier=classifier_recipe(run) if with_classifier else None,
    )
    spec = cfg.masker.encoder_model
    if spec is not None:
        manifest.encoder = {"builder": spec.builder, "kwargs": OmegaConf.to_container(spec.kwargs),
                            "layers": OmegaConf.to_container(spec.layers)}
    masker = run.masker.standalone(getattr(run.classifier, "trunk", None))  # a copy carrying its own encoder
    return StandaloneMasker(manifest, masker, run.classifier if with_classifier else None).eval()


def export_masker(checkpoint_path: str | Path, out_dir: str | Path, onnx: bool = False,
                  with_classifier: bool = False, trusted_builders: tuple[str, ...] = ()) -> Path:
    """Write ``masker.safetensors`` + ``masker.json`` (and ``masker.onnx`` on request) to ``out_dir``; with
    the classifier, its weights join the masker's and the ONNX graph (``explainer.onnx``) returns both."""
    if onnx:
        require_onnx()  # before anything is written
    model = masker_from_checkpoint(checkpoint_path, with_classifier, tuple(trusted_builders))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # an earlier export's graph no longer matches the new weights: never leave one beside them
    for graph in GRAPH_FILES:
        (out / graph).unlink(missing_ok=True)
    elsewhere = "export to another folder"
    if onnx:  # first: a graph that disagrees with PyTorch stops the export before the weights are replaced
        export_onnx(LogitsAndMasks(model) if with_classifier else model, model.manifest.image_size,
                    out / GRAPH_FILES[with_classifier], ["logits", "masks"] if with_classifier else ["masks"],
                    elsewhere=elsewhere)
    # written as bytes through the atomic writer: safetensors' save_file creates its file mode 0600, which
    # a folder meant to be shared (a model store, a container image) would then refuse to other users
    tensors = dict(model.masker.state_dict())
    if with_classifier:
        tensors.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": FORMAT})
    write_bytes_atomically(out / WEIGHTS_FILE, data, "masker weights", elsewhere)
    model.manifest.weights_sha256 = hashlib.sha256(data).hexdigest()
    model.manifest.manifest_sha256 = manifest_digest(asdict(model.manifest))
    # last: the manifest makes the folder an export, and its checksum refuses weights written without it
    write_text_atomically(out / MANIFEST_FILE, json.dumps(asdict(model.manifest), indent=2), "masker manifest",
                          elsewhere)
    return out


def has_classifier(export_dir: str | Path) -> bool:
    """Whether an export folder was made ``--with-classifier`` (its manifest checked as on loading)."""
    manifest = Path(export_dir) / MANIFEST_FILE
    return manifest.is_file() and read_manifest(manifest).classifier is not None


def load_explainer(export_dir: str | Path, device: str | torch.device = "cpu",
                   trusted_builders: tuple[str, ...] | list[str] = ()) -> StandaloneMasker:
    """An export made ``--with-classifier``: masker and classifier, so ``logits_and_masks(images)`` gives the
    prediction and its mask in one pass. ``trusted_builders``: modules (beyond torchvision's) allowed to
    rebuild an outside classifier, since rebuilding runs their code."""
    return load_masker(export_dir, device, with_classifier=True, trusted_builders=tuple(trusted_builders))


def load_masker(export_dir: str | Path, device: str | torch.device = "cpu", with_classifier: bool = False,
                trusted_builders: tuple[str, ...] = ()) -> StandaloneMasker:
    """Load an export folder as an ``nn.Module`` in eval mode, verifying the weights' checksum."""
    folder = Path(export_dir)
    manifest_path, weights = folder / MANIFEST_FILE, folder / WEIGHTS_FILE
    if folder.is_file():
        inside = (folder.parent / MANIFEST_FILE).is_file()
        raise ExportError(f"{folder}: a file; give the export's folder" +
                          (f" ({folder.parent})" if inside else f", which holds {MANIFEST_FILE} and {WEIGHTS_FILE}"))
    if not manifest_path.is_file() or not weights.is_file():
        raise ExportError(f"{folder}: not a casm masker export (expected {MANIFEST_FILE} and {WEIGHTS_FILE}); "
                          f"create one with: python -m casm export CHECKPOINT {folder}")
    manifest = read_manifest(manifest_path)
    if _sha256(weights) != manifest.weights_sha256:
        raise ExportError(f"{weights}: contents do not match the SHA-256 in {MANIFEST_FILE} "
                          f"(file modified or truncated); export it again")
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise ExportError(f"{weights}: cannot be read ({err})") from err
    classifier = None
    if with_classifier:
        if manifest.classifier is None:
            raise ExportError(f"{folder}: exported without its classifier; export the checkpoint again with "
                              f"--with-classifier (python -m casm export CHECKPOINT {folder} --with-classifier)")
        classifier = build_exported_classifier(manifest.classifier, manifest_path, trusted_builders)
    model = StandaloneMasker(manifest, build_masker(manifest, manifest_path, trusted_builders), classifier)
    parts = {"masker": {k: v for k, v in state.items() if not k.startswith("classifier.")}}
    if classifier is not None:
        parts["classifier"] = {k.removeprefix("classifier."): v for k, v in state.items()
                               if k.startswith("classifier.")}
    for name, part in parts.items():
        try:
            getattr(model, name).load_state_dict(part)
        except RuntimeError as err:
            raise ExportError(f"{weights}: its {name} weights do not fit {manifest.arch}/{manifest.head} "
                              f"({str(err).splitlines()[0]})") from err
    return model.eval().to(device)
