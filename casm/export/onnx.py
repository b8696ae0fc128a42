"""Optional ONNX export of a standalone masker, validated against PyTorch on export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from casm.errors import ExportError

if TYPE_CHECKING:  # a type only: standalone.py imports this module
    from casm.export.standalone import StandaloneMasker

ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| on the validation batch, masks in [0, 1]


def export_onnx(model: StandaloneMasker, path: Path, batch: int = 2) -> float:
    """Write ``path`` (dynamic batch axis) and return the max abs difference to PyTorch on a random batch."""
    try:
        import onnxruntime as ort  # an optional extra: imported only when an ONNX file is asked for
    except ImportError as err:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'casm-saliency[onnx]'") from err
    size = model.manifest.image_size
    example = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    torch.onnx.export(model.eval(), (example,), str(path), input_names=["images"], output_names=["masks"],
                      dynamic_axes={"images": {0: "batch"}, "masks": {0: "batch"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": example.numpy()})[0]
    with torch.no_grad():
        expected = model(example).numpy()
    diff = float(np.abs(got - expected).max())
    if diff > ONNX_TOLERANCE:
        raise ExportError(f"{path}: ONNX output differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE})")
    return diff
