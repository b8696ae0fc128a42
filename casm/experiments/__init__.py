"""Whole experiment protocols built from ordinary runs: the unseen-class study (``unseen``)."""
