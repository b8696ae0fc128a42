"""Fault injection in training: exploding learning rates, weights that are not finite, interrupted runs.
Each stops with one line naming the cause and the fix, and leaves only checkpoints that can be used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from casm.checkpoints import read_checkpoint
from casm.cli import main as cli_main
from casm.config import ConfigError
from casm.errors import NonFiniteLossError, TrainingDivergedError
from casm.training.module import CASMModule
from casm.training.run import train


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


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_exploded_weights_found_at_validation_stop_the_run_in_one_line_without_a_checkpoint(tiny_overrides, capsys,
                                                                                          optimizer):
    """A few huge steps leave finite but exploded weights whose validation outputs are NaN: that is divergence
    (one line, no interrupted.ckpt), not a crash in the metrics."""
    code = cli_main(["train", *tiny_overrides, f"optim.classifier_optimizer={optimizer}", "optim.classifier_lr=1e6",
                     "optim.masker_lr=1e6", "data.num_train=96", "casm.warmup_epochs=1", "trainer.max_epochs=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: training diverged"), err
    assert "Traceback" not in "".join(err)
    assert not list(Path(tiny_overrides[-1].split("=", 1)[1]).rglob("interrupted.ckpt"))


def test_an_epoch_whose_every_step_was_skipped_stops_the_run(tiny_cfg):
    """Fewer skipped steps in a row than casm.max_nonfinite_steps, but not one step taken in the epoch:
    the run must not end in 'run saved' with an untrained model."""
    cfg = tiny_cfg("casm.divergence_loss=1e-9", "casm.max_nonfinite_steps=1000", "trainer.max_epochs=3")
    with pytest.raises(TrainingDivergedError, match=r"all 4 steps of epoch 0 were skipped"):
        train(cfg)


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


def test_resume_from_a_mid_epoch_checkpoint_continues_exactly(tiny_cfg):
    """3 epochs straight == the same run killed after step 6 (mid-epoch 1) and resumed from that step
    checkpoint: weights, pool and lambda_R bit-identical (Lightning restarts the epoch's loader; casm
    fast-forwards its sampler past the batches already trained on)."""
    common = ["casm.thinning=L100", "casm.snapshot_every=3", "casm.pool_size=2", "casm.lambda_mode=target_area",
              "casm.warmup_epochs=1", "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=3"]
    straight = train(tiny_cfg(*common, "logging.name=straight"))
    first = train(tiny_cfg(*common, "logging.name=killed", "trainer.max_epochs=2"))
    step = first / "checkpoints" / "step0000006.ckpt"  # warm-up epoch = 4 steps; step 6 = 2nd batch of epoch 1
    assert read_checkpoint(step)["epoch"] == 1
    resumed = train(tiny_cfg(*common, f"resume={step}"))
    a, b = (read_checkpoint(r / "checkpoints" / "last.ckpt") for r in (straight, resumed))
    assert a["global_step"] == b["global_step"] and a["casm_state"]["casm_step"] == b["casm_state"]["casm_step"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert a["casm_state"]["lambda_r"] == b["casm_state"]["lambda_r"]
    assert a["casm_state"]["pool"]["snapshot_steps"] == b["casm_state"]["pool"]["snapshot_steps"]


def test_resume_with_random_augmentation_says_it_is_not_bit_identical(tiny_cfg, tmp_path, recwarn):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            for i in range(16 if split == "train" else 2):
                (tmp_path / "data" / split / c).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), (i * 8, 0, 0) if c == "a" else (0, i * 8, 0)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    data = ["data.name=folder", f"data.root={tmp_path / 'data'}", "data.num_workers=0", "trainer.max_epochs=1"]
    first = train(tiny_cfg(*data))
    with pytest.warns(UserWarning, match="crops and flips are drawn afresh"):
        train(tiny_cfg(*data, "trainer.max_epochs=2", f"resume={first / 'checkpoints' / 'last.ckpt'}"))
    # a folder without a box file: localization is skipped without torchmetrics' "compute before update"
    assert not [w for w in recwarn if "called before the ``update``" in str(w.message)]


def test_a_new_run_into_a_folder_that_holds_checkpoints_is_refused(tiny_cfg):
    """Same logging.version twice: Lightning alone would silently continue the first run under the second
    run's config (and, at max_epochs already, train nothing); casm stops before touching the folder."""
    run = train(tiny_cfg("trainer.max_epochs=1", "logging.version=exp"))
    last, config = run / "checkpoints" / "last.ckpt", (run / "config.yaml").read_text()
    stamp = last.resolve().stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"exp already holds checkpoints .*last\.ckpt.*resume=last"):
        train(tiny_cfg("trainer.max_epochs=1", "logging.version=exp", "optim.classifier_lr=0.5"))
    assert last.resolve().stat().st_mtime_ns == stamp and (run / "config.yaml").read_text() == config


def test_resume_last_starts_fresh_then_continues_from_the_newest_checkpoint(tiny_cfg):
    """The same command works for a job's first start and its requeue."""
    first = train(tiny_cfg("trainer.max_epochs=1", "logging.version=job", "resume=last"))
    assert read_checkpoint(first / "checkpoints" / "last.ckpt")["global_step"] == 8  # 4 batches x 2 optimizers
    again = train(tiny_cfg("trainer.max_epochs=2", "logging.version=job", "resume=last"))
    state = read_checkpoint(again / "checkpoints" / "last.ckpt")
    assert again == first and state["epoch"] == 1 and state["global_step"] == 16
    # it continued from last.ckpt, not from the epoch file it links to (Lightning would add last-v1.ckpt)
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == ["epoch001.ckpt", "last.ckpt"]
    # the resume is logged with what it changed (config.yaml holds the new config from then on)
    (line,) = (again / "resumes.log").read_text().splitlines()
    assert line.endswith("last.ckpt (saved at step 8) with these changes: trainer.max_epochs: 1 -> 2")


def test_a_requeued_slurm_job_continues_its_run(tiny_cfg, monkeypatch):
    """SLURM_RESTART_COUNT > 0: the same job started again (its folder has the job's name), so it
    continues from the newest checkpoint, Lightning's own requeue checkpoint (hpc_ckpt_N) included."""
    first = train(tiny_cfg("trainer.max_epochs=1", "logging.version=job_7"))
    hpc = first / "hpc_ckpt_1.ckpt"  # what Lightning writes on SIGUSR1 before requeueing the job
    hpc.write_bytes((first / "checkpoints" / "last.ckpt").read_bytes())
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = train(tiny_cfg("trainer.max_epochs=2", "logging.version=job_7"))
    assert again == first and read_checkpoint(first / "checkpoints" / "last.ckpt")["global_step"] == 16
    assert "hpc_ckpt_1.ckpt (saved at step 8)" in (first / "resumes.log").read_text()


def test_resume_last_needs_a_named_run_folder(tiny_cfg):
    with pytest.raises(ConfigError, match="resume=last .* logging.version=NAME"):
        train(tiny_cfg("resume=last"))


@pytest.mark.parametrize("moved,source", [(False, "last.ckpt"), (False, "step0000014.ckpt"), (True, "last.ckpt")])
def test_a_resumed_run_keeps_one_last_ckpt_and_only_the_newest_checkpoints(tiny_cfg, tmp_path, moved, source):
    """Lightning forgets its list of kept checkpoints when the run folder moved (and a checkpoint never lists
    itself): after a resume, old step and epoch files stayed, and last-v1.ckpt appeared beside a last.ckpt
    still pointing at the old epoch, so the same resume command went back in time."""
    import shutil

    steps = ("trainer.checkpoint_every_n_steps=2", "trainer.keep_step_checkpoints=2", "logging.version=r")
    first = tiny_cfg(*steps)
    run = train(first)
    if moved:
        run = Path(shutil.move(str(Path(first.logging.out_dir)), str(tmp_path / "moved"))) / "default" / "r"
    train(tiny_cfg(*steps, "trainer.max_epochs=4", f"resume={run / 'checkpoints' / source}"))
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch003.ckpt", "last.ckpt", "step0000030.ckpt",
                                                         "step0000032.ckpt"]
    assert (folder / "last.ckpt").resolve().name == "epoch003.ckpt"
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 3
