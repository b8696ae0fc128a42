"""casm: classifier-agnostic saliency maps, trained with PyTorch Lightning."""

__version__ = "0.1.0"
