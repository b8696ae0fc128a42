"""Fault injection: ``kill -9`` in the middle of a checkpoint write, then resume. No half-written file
is ever found under a checkpoint's name (nor picked up as ``last``), the stale partial file is cleared
at resume, and the resumed run ends bit-identical to one that was never killed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from casm.checkpoints import read_checkpoint
from casm.cli import train_main
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[2]
COMMON = ["casm.thinning=L100", "casm.snapshot_every=3", "casm.pool_size=2", "casm.lambda_mode=target_area",
          "casm.warmup_epochs=1", "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=3"]

# Runs training in a child process whose third checkpoint write dies with SIGKILL half-way through.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    from casm.training import checkpoint_io
    from casm.cli import train_main

    real_save, writes = torch.save, []

    def save_then_die(obj, f):
        writes.append(1)
        if len(writes) < 3:
            return real_save(obj, f)
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint_io.torch.save = save_then_die
    sys.exit(train_main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_resume(tmp_path):
    out = tmp_path / "runs"
    overrides = TINY + COMMON + [f"logging.out_dir={out}"]
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, *overrides, "logging.name=killed"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    folder = out / "killed" / "version_0" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    partial = [n for n in names if n.endswith(".tmp")]
    assert len(partial) == 1 and partial[0].startswith(".")  # the dying write, beside its final name
    for name in set(names) - set(partial):  # everything under a final name (and last.ckpt) loads whole
        assert "state_dict" in read_checkpoint(folder / name)

    assert train_main([f"resume={folder / 'last.ckpt'}"]) == 0  # the run's saved config.yaml applies
    assert not list(folder.glob(".*.tmp"))  # the stale partial file was cleared at resume
    assert train_main([*overrides, "logging.name=straight"]) == 0
    a, b = (read_checkpoint(out / name / "version_0" / "checkpoints" / "last.ckpt") for name in ("straight", "killed"))
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["casm_state"]["pool"]["snapshot_steps"] == b["casm_state"]["pool"]["snapshot_steps"]
