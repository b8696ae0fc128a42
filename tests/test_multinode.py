"""Two "nodes" on one machine: torchrun started twice (node ranks 0 and 1, one CPU process each), the way a
cluster starts casm on two machines. Both must join one run, share one run folder, and train the
single-process run's steps and pool schedule."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from casm.checkpoints import read_checkpoint
from casm.config import load_config
from casm.training.run import train

REPO = Path(__file__).resolve().parent.parent
RUN = ["trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp", "casm.warmup_epochs=1",
       "casm.snapshot_every=2", "casm.pool_size=3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_share_one_run(tmp_path, tiny_overrides):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("CASM_RUN_VERSION", None)
    port = _free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={n}",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=casmtest", str(REPO / "train.py"),
         *tiny_overrides, *RUN], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    runs = list((tmp_path / "runs" / "default").iterdir())
    assert [r.name for r in runs] == ["job_casmtest"]  # both nodes found the same folder
    both = read_checkpoint(runs[0] / "checkpoints" / "last.ckpt")["casm_state"]
    single = read_checkpoint(train(load_config(None, [*tiny_overrides, *RUN[3:], "logging.name=single"]))
                             / "checkpoints" / "last.ckpt")["casm_state"]
    assert both["casm_step"] == single["casm_step"] == 4  # global batch 16 over 64 images, 1 CASM epoch
    assert both["pool"]["snapshot_steps"] == single["pool"]["snapshot_steps"] == [0, 2]
