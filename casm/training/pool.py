"""The thinned pool of classifier snapshots that the masker is evaluated against (SPEC 1.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ThinningStrategy:
    """How the pool is filled and used.

    ``p_pool``: probability that a batch's evaluator is drawn from the pool rather than being the
    current classifier. ``snapshot_every``: steps between snapshots (``None``: only f(0), taken when
    masker training starts). ``capacity``: pool size; beyond it a random snapshot is evicted.
    """

    name: str
    train_classifier: bool
    p_pool: float
    snapshot_every: int | None
    capacity: int
    lambda_r_entropy: float  # the paper's lambda_R for ImageNet, score E
    lambda_r_classification: float  # ... score C


STRATEGIES: dict[str, ThinningStrategy] = {
    s.name: s
    for s in (
        # F: a fixed classifier, the classifier-dependent baseline; the pool stays empty.
        ThinningStrategy("F", False, 0.0, None, 0, 2.5, 9.0),
        # L: always the latest classifier.
        ThinningStrategy("L", True, 0.0, None, 0, 14.0, 18.0),
        # FL: the first classifier f(0) (the pool's one snapshot) or the latest, half and half.
        ThinningStrategy("FL", True, 0.5, None, 1, 7.5, 11.0),
        ThinningStrategy("L100", True, 0.5, 100, 30, 10.0, 17.0),
        ThinningStrategy("L1000", True, 0.5, 1000, 30, 10.0, 17.0),
    )
}


def resolve_strategy(name: str, p_pool: float | None = None, snapshot_every: int | None = None,
                     capacity: int | None = None) -> ThinningStrategy:
    """The named strategy with any of its numbers overridden."""
    base = STRATEGIES[name]
    return ThinningStrategy(
        name=base.name,
        train_classifier=base.train_classifier,
        p_pool=base.p_pool if p_pool is None else p_pool,
        snapshot_every=base.snapshot_every if snapshot_every is None else snapshot_every,
        capacity=base.capacity if capacity is None else capacity,
        lambda_r_entropy=base.lambda_r_entropy,
        lambda_r_classification=base.lambda_r_classification,
    )


class ClassifierPool:
    """Snapshots (state dicts) of the classifier along its SGD trajectory.

    All randomness (which evaluator, which snapshot to evict) comes from one seeded generator that
    every DDP rank advances identically, and that is saved with the snapshots, so sampling is the
    same on every rank and continues exactly after a resume.
    """

    def __init__(self, strategy: ThinningStrategy, seed: int = 0, batch_size: int = 1,
                 reference_batch: int | None = None) -> None:
        self.strategy = strategy
        # the schedule counts images: "every N steps" means every N x reference_batch images (batching.py)
        self.batch_size, self.reference_batch = batch_size, reference_batch or batch_size
        self.snapshots: list[dict[str, Tensor]] = []
        self.snapshot_steps: list[int] = []
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.snapshots)

    def wants_snapshot(self, step: int) -> bool:
        s = self.strategy
        if s.capacity == 0 or (self.snapshot_steps and self.snapshot_steps[-1] == step):
            return False  # (the second case: a step skipped as non-finite is tried again; its snapshot exists)
        if s.snapshot_every is None or step == 0:
            return step == 0
        interval = s.snapshot_every * self.reference_batch  # images between snapshots
        return step * self.batch_size // interval > (step - 1) * self.batch_size // interval

    def add(self, classifier: nn.Module, step: int) -> None:
        """Store a copy of ``classifier``'s weights, evicting a random snapshot when full."""
        state = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
        if len(self.snapshots) >= self.strategy.capacity:
            victim = int(torch.randint(len(self.snapshots), (1,), generator=self.generator))
            del self.snapshots[victim], self.snapshot_steps[victim]
        self.snapshots.append(state)
        self.snapshot_steps.append(step)

    def draw_evaluator(self) -> int | None:
        """Index of the pool snapshot that evaluates this batch, or ``None`` for the current classifier.

        Draws from the generator on every call, pool empty or not, so all ranks stay in step."""
        use_pool = float(torch.rand((), generator=self.generator)) < self.strategy.p_pool
        index = int(torch.randint(max(len(self.snapshots), 1), (1,), generator=self.generator))
        return index if use_pool and self.snapshots else None

    def state_dict(self) -> dict:
        return {
            "snapshots": self.snapshots,
            "snapshot_steps": list(self.snapshot_steps),
            "generator": self.generator.get_state(),
            "strategy": self.strategy.name,
        }

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        if state["strategy"] != self.strategy.name:
            raise ValueError(
                f"checkpoint pool was built with thinning {state['strategy']}, this run uses "
                f"{self.strategy.name}; resume with casm.thinning={state['strategy']}"
            )
        self.snapshots = [{k: v.to(device) for k, v in s.items()} for s in state["snapshots"]]
        self.snapshot_steps = list(state["snapshot_steps"])
        self.generator.set_state(state["generator"])

    def to(self, device: torch.device | str) -> "ClassifierPool":
        self.snapshots = [{k: v.to(device) for k, v in s.items()} for s in self.snapshots]
        return self
