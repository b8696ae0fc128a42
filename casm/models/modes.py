"""Context managers that change a module's mode and always restore it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module.eval()`` inside the block; every submodule's own ``training`` flag restored after,
    also when the block raises."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training


@contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm layers still normalize with the batch's statistics inside the block (train mode),
    but their running statistics are not updated (momentum 0), and are restored after.

    Why: the current classifier also classifies masked-out images (docs/training.md, the paper's eq. 8). Letting those
    update its running statistics mixes the statistics of half-erased images into the ones used at
    evaluation on clean images, so the features the masker reads at evaluation differ from those it
    was trained on (in a width-32 run without this, the final validation mask was 0.246 of the image in
    eval mode vs 0.198 with batch statistics)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield module
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
