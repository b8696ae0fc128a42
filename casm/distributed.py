"""Processes: the per-device share of the global batch, gradient averaging across DDP ranks done by
hand, and the few collectives training and evaluation need (below every layer that runs on many GPUs).

Why not DDP's own reducer: it assumes one backward pass per forward, over all parameters. A CASM
step takes two sets of gradients from one forward pass (the masker's through the evaluator, the
classifier's from the same graph) with ``torch.autograd.grad``, so the gradients are averaged here,
once per step, in one flat all-reduce.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from casm.config import ConfigError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def per_device_batch(global_batch: int, world_size: int) -> int:
    """Images each device loads per step; refuses a global batch that does not split evenly."""
    if global_batch % world_size:
        raise ConfigError(f"data.batch_size={global_batch} is the global batch (all devices together) and does not "
                          f"split evenly over {world_size} processes; use a multiple of {world_size}, e.g. "
                          f"data.batch_size={max(1, global_batch // world_size) * world_size}")
    return global_batch // world_size


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


def empty_on_any_rank(images: Tensor) -> bool:
    """Whether some rank's batch has no image (all unreadable, ``data.skip_corrupt``): every rank must then
    skip the step together, or the others wait forever in a gradient all-reduce this rank never joins."""
    empty = images.numel() == 0
    if world_size() > 1:
        empty = bool(all_reduce_mean([torch.tensor([float(empty)], device=images.device)])[0] > 0)
    return empty


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


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def sum_over_ranks(values: list[float]) -> list[float]:
    """Plain numbers summed over all ranks (counts, seconds), as Python floats."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (small, picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def launched_processes(device: str) -> Iterator[torch.device]:
    """For a command started by ``torchrun --nproc_per_node=N``: join the process group its environment
    describes (gloo for CPU tensors, NCCL for CUDA ones) and yield this process's device; a plain start
    yields ``device`` and joins nothing."""
    wanted = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield wanted
        return
    if wanted.type == "cuda":
        wanted = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(wanted)
    dist.init_process_group("cpu:gloo,cuda:nccl" if wanted.type == "cuda" else "gloo")
    try:
        yield wanted
    finally:
        dist.destroy_process_group()
