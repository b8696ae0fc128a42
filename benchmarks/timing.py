"""The one timing loop the benchmark scripts share."""

from __future__ import annotations

import time
from typing import Callable

import torch


def seconds_per_call(fn: Callable[[], object], repeats: int, device: str, warmup: int = 3) -> float:
    """Mean wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones (CUDA synchronized)."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats
