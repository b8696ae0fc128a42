"""casm: classifier-agnostic saliency maps, trained with PyTorch Lightning.

``casm.load_masker(EXPORT_DIR)`` returns a trained masker as an ``nn.Module`` (``casm.load_explainer``:
with its classifier, for an export made ``--with-classifier``); ``casm.explain`` gives masks and boxes
(and the predicted class) for new images. They are imported on first use, so ``import casm`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["load_masker", "load_explainer", "explain", "export_masker"]


def __getattr__(name: str):
    if name in __all__:
        from casm import export

        return getattr(export, name)
    raise AttributeError(f"module 'casm' has no attribute {name!r}")
