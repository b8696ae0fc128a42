"""The global batch, and what follows from it at any device count.

``data.batch_size`` is the *global* batch: images per optimizer step, summed over every device and
node. Each device loads ``batch_size / world_size`` of them and the gradients are averaged, so a run's
number of steps per epoch, its learning rates and its snapshot schedule do not depend on how many GPUs
run it: the paper's ImageNet setup (batch 128, lr 1e-3, a snapshot every 1000 steps) means the same on
1, 8 or 64 GPUs, and a run can resume on another GPU count.

A user who raises the global batch (say 1024 on 8 GPUs, to use them fully) states the batch the learning
rates were tuned for in ``optim.lr_reference_batch``; then

* the learning rates scale by ``optim.classifier_lr_scaling`` / ``optim.masker_lr_scaling``: ``linear``
  (lr x B/B_ref; Goyal et al. 2017, for SGD), ``sqrt`` (lr x sqrt(B/B_ref); the square-root rule for
  Adam, Malladi et al. 2022) or ``none``;
* the snapshot interval counts *images*: "a snapshot every N steps" means every N x B_ref images, so
  L1000 still takes a snapshot per 128 000 images at batch 128 and keeps its ~60 snapshots in the paper's
  60 epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from omegaconf import DictConfig

SCALING_RULES = ("linear", "sqrt", "none")


def scale_lr(lr: float, rule: str, batch: int, reference: int) -> float:
    ratio = batch / reference
    return {"linear": lr * ratio, "sqrt": lr * math.sqrt(ratio), "none": lr}[rule]


@dataclass(frozen=True)
class BatchPlan:
    """The learning rates and snapshot interval a run uses, given its global batch."""

    global_batch: int
    reference_batch: int
    classifier_lr: float
    masker_lr: float

    @property
    def ratio(self) -> float:
        return self.global_batch / self.reference_batch

    def describe(self, world_size: int, optim: DictConfig) -> str:
        text = f"casm: global batch {self.global_batch} = {world_size} x {self.global_batch // world_size} per device"
        if self.global_batch != self.reference_batch:
            text += (f"; learning rates stated for batch {self.reference_batch}: classifier {optim.classifier_lr:g} -> "
                     f"{self.classifier_lr:g} ({optim.classifier_lr_scaling}), masker {optim.masker_lr:g} -> "
                     f"{self.masker_lr:g} ({optim.masker_lr_scaling}); snapshot intervals count images "
                     f"(N steps at batch {self.reference_batch} = N / {self.ratio:g} steps here)")
        return text


def batch_plan(cfg: DictConfig) -> BatchPlan:
    o = cfg.optim
    batch = cfg.data.batch_size
    reference = o.lr_reference_batch or batch
    return BatchPlan(batch, reference, scale_lr(o.classifier_lr, o.classifier_lr_scaling, batch, reference),
                     scale_lr(o.masker_lr, o.masker_lr_scaling, batch, reference))


def classifier_optimizer(parameters: Iterable[torch.nn.Parameter], cfg: DictConfig) -> torch.optim.Optimizer:
    """The classifier's optimizer (``optim.classifier_optimizer``) at its batch-scaled learning rate; one
    definition for the CASM and the LFI-CAM modules."""
    o, lr = cfg.optim, batch_plan(cfg).classifier_lr
    if o.classifier_optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=o.classifier_weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=o.classifier_momentum, weight_decay=o.classifier_weight_decay)
