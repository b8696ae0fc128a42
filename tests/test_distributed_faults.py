"""DDP faults with two CPU processes: a batch emptied on one rank must not hang the others; every epoch
reshuffles even where Lightning does not forward ``set_epoch`` to casm's sampler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from casm.checkpoints import read_checkpoint
from casm.config import load_config
from casm.data.datamodule import EpochShuffleSampler, LocalizationDataModule

REPO = Path(__file__).resolve().parent.parent

# Every DDP process runs this script (Lightning starts rank 1 by re-running it): casm's training, with
# STEP run at the start of every training step.
PATCHED_TRAINING = """
import json, sys
from casm.cli import train_main
from casm.data.transforms import denormalize
from casm.training.module import CASMModule

original = CASMModule.training_step

def training_step(self, batch, batch_idx):
{step}
    return original(self, batch, batch_idx)

CASMModule.training_step = training_step
sys.exit(train_main(sys.argv[1:]))
"""


def train_two_ranks(tmp_path, step: str, overrides: list[str]) -> subprocess.CompletedProcess:
    """Train with 2 DDP CPU processes, ``step`` (indented Python) patched into every training step."""
    script = tmp_path / "train_patched.py"
    script.write_text(PATCHED_TRAINING.format(step=textwrap.indent(textwrap.dedent(step), "    ")))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.pop("CASM_RUN_VERSION", None)
    cmd = [sys.executable, str(script), *overrides, "trainer.devices=2", "trainer.strategy=ddp"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# rank 1's second batch of every epoch arrives empty, as when data.skip_corrupt dropped all its images
EMPTY_ON_RANK_1 = """
    if self.global_rank == 1 and batch_idx == 1:
        batch = dict(batch, image=batch["image"][:0], label=batch["label"][:0], skipped=len(batch["label"]))
"""


def test_an_empty_batch_on_one_rank_skips_the_step_on_all(tmp_path, tiny_overrides):
    result = train_two_ranks(tmp_path, EMPTY_ON_RANK_1, [
        *tiny_overrides, "casm.thinning=L100", "casm.snapshot_every=1", "casm.pool_size=3", "trainer.max_epochs=2",
        "casm.warmup_epochs=1"])
    assert "every rank skips this step" in result.stdout + result.stderr
    state = read_checkpoint(next((tmp_path / "runs").rglob("last.ckpt")))
    # 4 batches of 8 per rank and epoch (global batch 16), one of them skipped on both ranks: 3 CASM steps
    assert state["epoch"] == 1 and state["casm_state"]["casm_step"] == 3


# each rank writes the images it trained on (as checksums of their 8-bit pixels), step by step
RECORD_BATCHES = """
    with open(f"seen_rank{self.global_rank}.jsonl", "a") as f:
        sums = (denormalize(batch["image"]) * 255).round().sum(dim=(1, 2, 3)).long().tolist()
        f.write(json.dumps([self.current_epoch, batch_idx, sums]) + "\\n")
"""


def test_two_ranks_train_on_one_process_global_batches_reshuffled_every_epoch(tmp_path, tiny_overrides):
    train_two_ranks(tmp_path, RECORD_BATCHES,
                    [*tiny_overrides, "trainer.max_epochs=3", "casm.warmup_epochs=1", "trainer.limit_val_batches=0"])
    seen: dict[tuple[int, int], list[float]] = {}  # (epoch, step) -> both ranks' images
    for rank in (0, 1):
        for line in (tmp_path / f"seen_rank{rank}.jsonl").read_text().splitlines():
            epoch, step, sums = json.loads(line)
            assert len(sums) == 8  # global batch 16: 8 per rank
            seen.setdefault((epoch, step), []).extend(sums)
    # what one process would train on: the sampler's order for (seed, epoch), cut into batches of 16
    dm = LocalizationDataModule(load_config(None, tiny_overrides).data)
    dm.setup()
    checksum = [int(dm.train_set[i]["image"].long().sum()) for i in range(len(dm.train_set))]
    sampler = EpochShuffleSampler(len(checksum), seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = [checksum[i] for i in sampler]
        for step in range(4):
            assert sorted(seen[(epoch, step)]) == sorted(order[16 * step: 16 * (step + 1)]), (epoch, step)
    assert sorted(seen) == [(e, s) for e in range(3) for s in range(4)]
    assert seen[(0, 0)] != seen[(1, 0)] != seen[(2, 0)]  # a new order every epoch
