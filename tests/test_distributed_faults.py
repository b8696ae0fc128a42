"""DDP faults with two CPU processes: a batch emptied on one rank must not hang the others."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from casm.checkpoints import read_checkpoint

REPO = Path(__file__).resolve().parent.parent

# Every DDP process runs this file (Lightning starts rank 1 by re-running the script): rank 1's second
# batch of every epoch arrives empty, as when data.skip_corrupt dropped all its images.
EMPTY_ON_RANK_1 = textwrap.dedent("""
    import sys
    import torch
    from casm.cli import train_main
    from casm.training.module import CASMModule

    original = CASMModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx == 1:
            batch = dict(batch, image=batch["image"][:0], label=batch["label"][:0], skipped=len(batch["label"]))
        return original(self, batch, batch_idx)

    CASMModule.training_step = training_step
    sys.exit(train_main(sys.argv[1:]))
""")


def test_an_empty_batch_on_one_rank_skips_the_step_on_all(tmp_path, tiny_overrides):
    script = tmp_path / "train_empty_rank.py"
    script.write_text(EMPTY_ON_RANK_1)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.pop("CASM_RUN_VERSION", None)
    cmd = [sys.executable, str(script), *tiny_overrides, "trainer.devices=2", "trainer.strategy=ddp",
           "casm.thinning=L100", "casm.snapshot_every=1", "casm.pool_size=3", "trainer.max_epochs=2",
           "casm.warmup_epochs=1"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every rank skips this step" in result.stdout + result.stderr
    state = read_checkpoint(next((tmp_path / "runs").rglob("last.ckpt")))
    # 4 batches of 8 per rank and epoch (global batch 16), one of them skipped on both ranks: 3 CASM steps
    assert state["epoch"] == 1 and state["casm_state"]["casm_step"] == 3
