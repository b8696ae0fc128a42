"""The pool on disk: each snapshot is written once, checkpoints name it, evicted files are removed once no
checkpoint needs them, and a missing or damaged snapshot stops a resume with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import casm.training.pool as pool_lib
from casm.checkpoints import POOL_FOLDER, read_checkpoint, read_pool
from casm.cli import main as cli_main
from casm.training.pool import ClassifierPool, resolve_strategy
from casm.training.run import train

POOL_RUN = ["casm.thinning=L100", "casm.snapshot_every=1", "casm.pool_size=2", "trainer.max_epochs=2",
            "trainer.checkpoint_every_n_steps=3", "trainer.keep_step_checkpoints=1"]


@pytest.fixture
def pool_run(tiny_cfg, monkeypatch):
    """A run that takes a snapshot every step into a pool of 2 (so most are evicted), with its writes."""
    writes = []
    real = pool_lib.write_snapshot

    def counted(folder, step, state):
        writes.append(step)
        return real(folder, step, state)

    monkeypatch.setattr(pool_lib, "write_snapshot", counted)
    return train(tiny_cfg(*POOL_RUN)), writes


def test_each_snapshot_is_written_once_and_checkpoints_only_name_it(pool_run):
    run, writes = pool_run
    state = read_checkpoint(run / "checkpoints" / "last.ckpt")
    pool = state["casm_state"]["pool"]
    assert "snapshots" not in pool and len(pool["files"]) == 2
    assert writes == list(range(state["casm_state"]["casm_step"]))  # one write per snapshot, at its step
    assert not any(isinstance(v, torch.Tensor) and v.ndim > 1 for v in pool.values())
    snapshots = read_pool(run / "checkpoints" / "last.ckpt")
    assert [s["fc.weight"].shape for s in snapshots] == [state["state_dict"]["classifier.fc.weight"].shape] * 2


def test_snapshots_no_checkpoint_names_are_removed(pool_run):
    run, writes = pool_run
    ckpts = [p for p in (run / "checkpoints").glob("*.ckpt") if not p.is_symlink()]
    named = {f for p in ckpts for f in read_checkpoint(p)["casm_state"]["pool"]["files"]}
    on_disk = {p.name for p in (run / POOL_FOLDER).glob("*.safetensors")}
    assert on_disk == named  # 8 snapshots written, the evicted ones gone
    assert len(writes) == 8 and len(on_disk) < len(writes)


@pytest.mark.parametrize("damage, message", [("delete", "which is missing"), ("flip", "is damaged")])
def test_a_missing_or_damaged_snapshot_stops_the_resume_in_one_line(pool_run, tiny_overrides, damage, message, capsys):
    run, _ = pool_run
    ckpt = run / "checkpoints" / "last.ckpt"
    victim = run / POOL_FOLDER / read_checkpoint(ckpt)["casm_state"]["pool"]["files"][0]
    if damage == "delete":
        victim.unlink()
    else:
        data = bytearray(victim.read_bytes())
        data[-5] ^= 0xFF  # a bit flip inside a tensor: the file still parses
        victim.write_bytes(bytes(data))
    assert cli_main(["train", *tiny_overrides, *POOL_RUN, "trainer.max_epochs=3", f"resume={ckpt}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and victim.name in err[0] and message in err[0] and "whole run folder" in err[0]


def test_an_inline_pool_from_an_older_checkpoint_moves_to_disk(tmp_path):
    strategy = resolve_strategy("L100", capacity=3)
    old = ClassifierPool(strategy, seed=1)  # not attached: its state carries the tensors (as casm <= 0.1 did)
    model = nn.Linear(2, 2)
    for step in (0, 100):
        old.add(model, step)
    state = old.state_dict()
    assert len(state["snapshots"]) == 2
    new = ClassifierPool(strategy, seed=1)
    new.attach(tmp_path / "pool", writes=True)
    new.load_state_dict(state)
    saved = new.state_dict()
    assert "snapshots" not in saved and len(list((tmp_path / "pool").glob("step*.safetensors"))) == 2
    again = ClassifierPool(strategy, seed=1)
    again.attach(tmp_path / "pool", writes=False)  # another DDP rank: reads, never writes
    again.load_state_dict(saved)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(again.snapshots, old.snapshots) for k in a)
    assert "snapshots" in again.state_dict()  # a non-writing rank's state is never saved; it stays whole


def test_a_snapshot_file_is_bit_identical_to_the_weights(tmp_path):
    pool = ClassifierPool(resolve_strategy("FL"), seed=0)
    pool.attach(tmp_path, writes=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    pool.add(model, 0)
    restored = ClassifierPool(resolve_strategy("FL"), seed=0)
    restored.attach(tmp_path, writes=True)
    restored.load_state_dict(pool.state_dict())
    assert restored.snapshots[0].keys() == model.state_dict().keys()
    assert all(torch.equal(restored.snapshots[0][k], v) for k, v in model.state_dict().items())
    assert Path(tmp_path, pool.files[0][0]).stat().st_size > 0
