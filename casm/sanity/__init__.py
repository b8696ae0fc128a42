"""Sanity checks of saliency methods: manipulation attacks (docs/sanity.md)."""
