"""Standalone maskers: export a trained masker from a training checkpoint, and load it back.

An export is a folder with two files:

* ``masker.safetensors``: the masker's weights, encoder included (a copy of the classifier's trunk
  when the encoder was shared), so it keeps working whatever later happens to the classifier.
  safetensors holds tensors only: loading a file cannot run code.
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
from safetensors.torch import load_file, save
from torch import Tensor, nn

import casm
from casm.checkpoints import write_atomically
from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
from casm.data.transforms import eval_resize
from casm.errors import ExportError
from casm.export.onnx import export_onnx
from casm.models import Masker, ResNetTrunk, build_head
from casm.trained_run import read_run

WEIGHTS_FILE = "masker.safetensors"
MANIFEST_FILE = "masker.json"
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


class StandaloneMasker(nn.Module):
    """``masker(images) -> masks``: normalized (B, 3, H, W) -> (B, 1, H, W) in [0, 1]. No classifier,
    no gradients: one forward pass. ``manifest`` says how images must be prepared."""

    def __init__(self, manifest: MaskerManifest) -> None:
        super().__init__()
        self.manifest = manifest
        trunk = ResNetTrunk(manifest.arch, manifest.width)
        self.masker = Masker(build_head(manifest.head, trunk.channels, manifest.hidden, manifest.feature_layer), trunk)

    def forward(self, images: Tensor) -> Tensor:
        return self.masker(images)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def masker_from_checkpoint(checkpoint_path: str | Path) -> StandaloneMasker:
    """Rebuild the trained masker of a casm training checkpoint as a standalone module (eval mode)."""
    try:
        run = read_run(checkpoint_path)
    except ValueError as err:
        raise ExportError(str(err)) from err
    cfg = run.cfg
    manifest = MaskerManifest(
        arch=cfg.model.arch, width=cfg.model.width, head=cfg.masker.head, hidden=cfg.masker.hidden,
        feature_layer=cfg.masker.get("feature_layer"), image_size=cfg.data.image_size, resize=eval_resize(cfg.data),
        classes=list(run.class_names or []), source_checkpoint=str(checkpoint_path),
    )
    standalone = StandaloneMasker(manifest)
    standalone.masker.load_state_dict(run.masker.standalone(run.classifier.trunk).state_dict())
    return standalone.eval()


def export_masker(checkpoint_path: str | Path, out_dir: str | Path, onnx: bool = False) -> Path:
    """Write ``masker.safetensors`` + ``masker.json`` (and ``masker.onnx`` on request) to ``out_dir``."""
    model = masker_from_checkpoint(checkpoint_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # written as bytes through the atomic writer: safetensors' save_file creates its file mode 0600, which
    # a folder meant to be shared (a model store, a container image) would then refuse to other users
    data = save({k: v.contiguous() for k, v in model.masker.state_dict().items()}, metadata={"format": FORMAT})
    write_atomically(out / WEIGHTS_FILE, lambda f: f.write(data), what="masker weights")
    model.manifest.weights_sha256 = hashlib.sha256(data).hexdigest()
    model.manifest.manifest_sha256 = manifest_digest(asdict(model.manifest))
    manifest = json.dumps(asdict(model.manifest), indent=2).encode()
    write_atomically(out / MANIFEST_FILE, lambda f: f.write(manifest), what="masker manifest")
    if onnx:
        export_onnx(model, out / "masker.onnx")
    return out


def load_masker(export_dir: str | Path, device: str | torch.device = "cpu") -> StandaloneMasker:
    """Load an export folder as an ``nn.Module`` in eval mode, verifying the weights' checksum."""
    folder = Path(export_dir)
    manifest_path, weights = folder / MANIFEST_FILE, folder / WEIGHTS_FILE
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
    model = StandaloneMasker(manifest)
    try:
        model.masker.load_state_dict(state)
    except RuntimeError as err:
        raise ExportError(f"{weights}: does not fit {manifest.arch}/{manifest.head} "
                          f"({str(err).splitlines()[0]})") from err
    return model.eval().to(device)
