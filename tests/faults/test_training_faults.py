"""Fault injection in training: exploding learning rates, weights that are not finite, interrupted runs.
Each stops with one line naming the cause and the fix, and leaves only checkpoints that can be used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from casm.cli import main as cli_main
from casm.errors import NonFiniteLossError, TrainingDivergedError
from casm.training.module import CASMModule
from casm.training.run import read_checkpoint, train


def test_an_exploding_learning_rate_stops_the_run_without_saving_its_weights(tiny_cfg):
    cfg = tiny_cfg("optim.classifier_optimizer=adam", "optim.classifier_lr=1e6", "optim.masker_lr=1e6",
                   "casm.max_nonfinite_steps=2", "trainer.max_epochs=4")
    with pytest.raises(TrainingDivergedError, match=r"casm.divergence_loss=1000 for 2 consecutive steps"):
        train(cfg)
    out = Path(cfg.logging.out_dir)
    assert not list(out.rglob("interrupted.ckpt"))
    for ckpt in out.rglob("*.ckpt"):  # whatever was written before the divergence is finite and loads
        state = read_checkpoint(ckpt)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_divergence_is_one_line_with_exit_code_2(tiny_overrides, capsys):
    code = cli_main(["train", *tiny_overrides, "optim.classifier_optimizer=adam", "optim.classifier_lr=1e6",
                     "optim.masker_lr=1e6", "casm.max_nonfinite_steps=2", "trainer.max_epochs=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: training diverged") and "Traceback" not in "".join(err)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tiny_cfg):
    module = CASMModule(dict(tiny_cfg()), 10)
    with torch.no_grad():
        next(module.classifier.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite weights"):
        module.on_save_checkpoint({"state_dict": module.state_dict()})


def test_divergence_check_can_be_switched_off(tiny_cfg):
    cfg = tiny_cfg("casm.divergence_loss=null", "trainer.max_epochs=1")
    assert cfg.casm.divergence_loss is None
    train(cfg)
