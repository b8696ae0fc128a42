"""The thinned pool of classifier snapshots that the masker is evaluated against (docs/training.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from casm.checkpoints import read_snapshot, snapshot_path, write_snapshot
from casm.errors import UserError


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

    Once :meth:`attach` gives it a folder, each snapshot is written there once, when taken (by the
    process that writes checkpoints), and :meth:`state_dict` names the files instead of copying the
    tensors: a checkpoint stays the size of the models, however large the pool (30 ResNet-50s: ~3 GB).
    """

    def __init__(self, strategy: ThinningStrategy, seed: int = 0, batch_size: int = 1,
                 reference_batch: int | None = None) -> None:
        self.strategy = strategy
        # the schedule counts images: "every N steps" means every N x reference_batch images (batching.py)
        self.batch_size, self.reference_batch = batch_size, reference_batch or batch_size
        self.snapshots: list[dict[str, Tensor]] = []
        self.snapshot_steps: list[int] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.folder: Path | None = None  # where snapshots live on disk (None: checkpoints hold them)
        self.writes = False  # whether this process writes them (DDP: global rank 0)
        self.files: list[tuple[str, str] | None] = []  # (file name, SHA-256) per snapshot, on the writer

    def attach(self, folder: str | Path, writes: bool) -> None:
        self.folder, self.writes = Path(folder), writes

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
            victim = int(torch.randint(len(self.snapshots), (1,), generator=self.generator).numpy()[0])
            del self.snapshots[victim], self.snapshot_steps[victim], self.files[victim]
        self.snapshots.append(state)
        self.snapshot_steps.append(step)
        self.files.append(write_snapshot(self.folder, step, state) if self.folder and self.writes else None)

    def draw_evaluator(self) -> int | None:
        """Index of the pool snapshot that evaluates this batch, or ``None`` for the current classifier.

        Draws from the generator on every call, pool empty or not, so all ranks stay in step."""
        # read through NumPy: the generator lives on the host, and .item() would count as a device sync
        use_pool = float(torch.rand((), generator=self.generator).numpy()) < self.strategy.p_pool
        index = int(torch.randint(max(len(self.snapshots), 1), (1,), generator=self.generator).numpy()[0])
        return index if use_pool and self.snapshots else None

    def state_dict(self) -> dict:
        """Names and digests of the snapshot files when attached to a folder, else the tensors."""
        state = {"snapshot_steps": list(self.snapshot_steps), "generator": self.generator.get_state(),
                 "strategy": self.strategy.name}
        if self.folder is not None and self.writes:
            state.update(files=[f[0] for f in self.files], sha256=[f[1] for f in self.files])
        else:
            state["snapshots"] = self.snapshots
        return state

    def check_resumable(self, state: dict, folder: Path | None, source: str = "the checkpoint") -> None:
        """Refuse, before anything is written, a :meth:`state_dict` this pool cannot continue: another
        thinning strategy, or snapshot files missing from ``folder``."""
        if state["strategy"] != self.strategy.name:
            raise UserError(
                f"{source}: its pool was built with thinning {state['strategy']}, this run uses "
                f"{self.strategy.name}; resume with casm.thinning={state['strategy']}"
            )
        if "files" in state and folder is not None:
            for name in state["files"]:
                snapshot_path(folder, name, source)

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu", source: str = "the checkpoint") -> None:
        """Restore from :meth:`state_dict`; snapshot files are read from the attached folder and checked
        against their digests (``source``, the checkpoint, is named in the errors)."""
        self.check_resumable(state, None, source)
        if "files" in state:
            if self.folder is None:
                raise UserError(f"{source} keeps its pool in a run folder's pool/; resume it with train.py resume=")
            entries = list(zip(state["files"], state["sha256"]))
            snapshots = [read_snapshot(self.folder, name, digest, source) for name, digest in entries]
        else:  # the tensors in the checkpoint itself (a pool that was not attached, or an older casm)
            snapshots, entries = state["snapshots"], [None] * len(state["snapshots"])
            if self.folder is not None and self.writes:  # from now on on disk, like the rest of the run
                entries = [write_snapshot(self.folder, step, s) for step, s in zip(state["snapshot_steps"], snapshots)]
        self.snapshots = [{k: v.to(device) for k, v in s.items()} for s in snapshots]
        self.files = entries if self.writes else [None] * len(snapshots)
        self.snapshot_steps = list(state["snapshot_steps"])
        self.generator.set_state(state["generator"])

    def to(self, device: torch.device | str) -> "ClassifierPool":
        self.snapshots = [{k: v.to(device) for k, v in s.items()} for s in self.snapshots]
        return self
