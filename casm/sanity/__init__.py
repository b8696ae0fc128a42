"""Sanity checks of saliency methods: manipulation attacks (SPEC 5)."""
