"""Optional ONNX export of a standalone masker (or masker + classifier), validated against PyTorch on export."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from casm.checkpoints import write_bytes_atomically
from casm.errors import ExportError

ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| on the validation batch (masks in [0, 1], logits)


def require_onnx() -> Any:
    """onnxruntime, or the one line that says how to install it (asked before an export writes anything)."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime
    except ImportError as err:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'casm-saliency[onnx]'") from err
    return onnxruntime


def export_onnx(model: nn.Module, image_size: int, path: Path, outputs: list[str], batch: int = 2,
                elsewhere: str = "export elsewhere") -> float:
    """Write ``path`` (images -> ``outputs``, dynamic batch axis), atomically, once its outputs agree with
    PyTorch on a random batch; returns the max abs difference over every output."""
    ort = require_onnx()
    example = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    graph = io.BytesIO()
    torch.onnx.export(model.eval(), (example,), graph, input_names=["images"], output_names=outputs,
                      dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]}, opset_version=17,
                      dynamo=False)
    session = ort.InferenceSession(graph.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": example.numpy()})
    with torch.no_grad():
        expected = model(example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    # relative to each output's scale where it exceeds 1 (logits), absolute below (masks in [0, 1])
    diff = max(float(np.abs(g - e.numpy()).max()) / max(1.0, float(e.abs().max())) for g, e in zip(got, expected))
    if diff > ONNX_TOLERANCE:
        raise ExportError(f"{path}: ONNX output differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE})")
    write_bytes_atomically(path, graph.getvalue(), "ONNX graph", elsewhere)
    return diff
