"""Standalone maskers: export from a training checkpoint, load, explain new images."""

from casm.export.explain import Explanation, explain, write_explanations
from casm.export.standalone import (
    ExportError,
    StandaloneMasker,
    export_masker,
    load_explainer,
    load_masker,
    masker_from_checkpoint,
)

__all__ = ["Explanation", "explain", "write_explanations", "ExportError", "StandaloneMasker", "export_masker",
           "load_explainer", "load_masker", "masker_from_checkpoint"]
