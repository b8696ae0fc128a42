"""Gradient averaging across DDP ranks, done by hand.

Why not DDP's own reducer: it assumes one backward pass per forward, over all parameters. A CASM
step takes two sets of gradients from one forward pass (the masker's through the evaluator, the
classifier's from the same graph) with ``torch.autograd.grad``, so the gradients are averaged here,
once per step, in one flat all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(tensors: list[Tensor]) -> list[Tensor]:
    """The mean of each tensor over all ranks (the tensors themselves when not distributed)."""
    if world_size() == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset: offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return out


def assert_same_on_all_ranks(value: Tensor, what: str) -> None:
    """Fail loudly if ranks disagree on ``value`` (e.g. weights or the pool's RNG state): a DDP run
    whose ranks drifted apart would otherwise train silently wrong."""
    if world_size() == 1:
        return
    v = value.detach().double().reshape(1)
    low, high = v.clone(), v.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError(f"DDP ranks disagree on {what} ({low.item()} vs {high.item()})")
