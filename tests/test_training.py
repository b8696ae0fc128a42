"""CASM training invariants: no masker gradient in the classifier, frozen F, exact resume,
non-finite steps, architecture checks and DDP on two CPU processes."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import casm.training.module as module_lib
from casm.checkpoints import read_checkpoint, read_pool
from casm.config import ConfigError, load_config
from casm.data.datamodule import LocalizationDataModule
from casm.data.transforms import normalize_images
from casm.models import ResNetClassifier
from casm.training.module import CASMModule, NonFiniteLossError
from casm.training.run import check_resume_compatible, train

REPO = Path(__file__).resolve().parent.parent


def fit(cfg, steps: int = 1) -> CASMModule:
    """Build the module with a fixed seed and run ``steps`` training batches."""
    pl.seed_everything(0, verbose=False)
    dm = LocalizationDataModule(cfg.data, cfg.seed)
    module = CASMModule(dict(cfg), dm.num_classes)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=cfg.logging.out_dir)  # pool snapshots: tmp, not ./pool
    trainer.fit(module, datamodule=dm)
    return module


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fill", ["mean", "blur", "telea", "noise"])
def test_masker_loss_does_not_move_the_classifier(tiny_cfg, fill):
    """Same batch, same evaluator, very different masker objectives (every option of the objective on in
    the second): the classifier must take the identical step (its loss alone drives it), while the
    masker steps differently."""
    a = fit(tiny_cfg("casm.thinning=L", "casm.lambda_r=0", "casm.score=E", f"casm.fill={fill}"))
    b = fit(tiny_cfg("casm.thinning=L", "casm.lambda_r=1000", "casm.score=C", f"casm.fill={fill}",
                     "casm.lambda_in=5", "casm.lambda_tv=1"))
    ca, cb = params(a.classifier), params(b.classifier)
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    ma, mb = params(a.masker), params(b.masker)
    assert any(not torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.parametrize("on_masked", [False, True])
def test_a_classifier_on_clean_images_only_never_sees_the_masked_out_ones(tiny_cfg, on_masked):
    """Two fills give different masked-out images: a classifier trained on clean images only takes the
    same step under both; one that also learns from the masked-out images (the paper) does not."""
    runs = [fit(tiny_cfg("casm.thinning=L", "casm.p_pool=0", f"casm.fill={fill}",
                         f"casm.classifier_on_masked={on_masked}")) for fill in ("mean", "noise")]
    ca, cb = (params(run.classifier) for run in runs)
    same = all(torch.equal(ca[k], cb[k]) for k in ca)
    assert same is (not on_masked)


def test_a_bounded_run_logs_the_logit_excess(tiny_cfg):
    module = fit(tiny_cfg("casm.mask_logit_bound=0.01", "casm.area_gate=all"), steps=2)
    assert float(module.trainer.callback_metrics["train/logit_excess"]) > 0


def test_masker_gradient_leak_would_be_caught(tiny_cfg, monkeypatch):
    """Counter-check of the test above: a masker whose features are *not* detached changes the
    classifier's step, so the invariant test can fail."""
    from casm.models.masker import Masker

    def leaky_forward(self, x, features=None):
        return self.head(features, x)

    a = fit(tiny_cfg("casm.thinning=L", "casm.lambda_r=0", "casm.score=E"))
    monkeypatch.setattr(Masker, "forward", leaky_forward)
    monkeypatch.setattr(module_lib.CASMModule, "_casm_step", _leaky_step)
    b = fit(tiny_cfg("casm.thinning=L", "casm.lambda_r=1000", "casm.score=C"))
    ca, cb = params(a.classifier), params(b.classifier)
    assert any(not torch.equal(ca[k], cb[k]) for k in ca if k.endswith("weight"))


def _leaky_step(self, x, y):
    """A wrong CASM step: one backward of the summed losses into every parameter."""
    logits, feats = self.classifier(x)
    mask = self.masker(x, feats)
    logits_out, _ = self.classifier(module_lib.remove_masked(x, mask))
    loss = module_lib.masker_loss(logits_out, y, logits.argmax(1) == y, mask, self.lambda_r.value,
                                  self.cfg.casm.score).total
    loss = loss + torch.nn.functional.cross_entropy(logits, y)
    for opt in self.optimizers():
        opt.zero_grad()
    self.manual_backward(loss)
    for opt in self.optimizers():
        opt.step()


def test_fixed_classifier_strategy_never_changes_the_classifier(tiny_cfg):
    cfg = tiny_cfg("casm.thinning=F")
    pl.seed_everything(0, verbose=False)
    before = params(CASMModule(dict(cfg), 10).classifier)
    after = fit(cfg, steps=3)
    assert all(torch.equal(before[k], v) for k, v in params(after.classifier).items())  # BN stats too


def test_pool_fills_during_training(tiny_cfg):
    module = fit(tiny_cfg("casm.thinning=L100", "casm.snapshot_every=2", "casm.pool_size=2"), steps=4)
    assert module.pool.snapshot_steps == [0, 2]  # pool updated before steps 0..3
    assert module.casm_step == 4


def _final_state(run_dir: Path) -> dict:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("averaged", [False, True])
def test_resume_continues_exactly(tiny_cfg, tmp_path, averaged):
    """2 epochs straight == 1 epoch, killed, resumed for a 2nd: weights, optimizers, pool, lambda_R (and the
    masker's average: the live masker it trains on and the average it saves)."""
    common = ["casm.thinning=L100", "casm.snapshot_every=2", "casm.pool_size=2", "casm.lambda_mode=target_area",
              "casm.warmup_epochs=1", "trainer.max_epochs=3"] + (["casm.masker_average_steps=3"] if averaged else [])
    straight = train(tiny_cfg(*common, "logging.name=straight"))
    first = train(tiny_cfg(*common, "logging.name=resumed", "trainer.max_epochs=2"))
    resumed = train(tiny_cfg(*common, "trainer.max_epochs=3", f"resume={first / 'checkpoints' / 'last.ckpt'}"))
    assert resumed == first
    a, b = _final_state(straight), _final_state(resumed)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    pa, pb = a["casm_state"]["pool"], b["casm_state"]["pool"]
    assert pa["snapshot_steps"] == pb["snapshot_steps"] and len(pa["snapshot_steps"]) == 2
    assert torch.equal(pa["generator"], pb["generator"])
    snapshots_a, snapshots_b = (read_pool(run / "checkpoints" / "last.ckpt") for run in (straight, resumed))
    assert len(snapshots_a) == 2
    for sa, sb in zip(snapshots_a, snapshots_b):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["casm_state"]["lambda_r"] == b["casm_state"]["lambda_r"]
    live_a, live_b = (s["casm_state"]["masker_average"].get("live_masker", {}) for s in (a, b))
    assert len(live_a) == (len(list(k for k in a["state_dict"] if k.startswith("masker."))) if averaged else 0)
    for k, v in live_a.items():
        assert torch.equal(v, live_b[k]), k
        assert not averaged or k.endswith("num_batches_tracked") or not torch.equal(v, a["state_dict"][k]), k
    assert a["optimizer_states"][1]["state"][0]["exp_avg"].equal(b["optimizer_states"][1]["state"][0]["exp_avg"])
    assert (first / "config.yaml").is_file()


def test_resume_into_another_architecture_or_with_settings_its_state_overrides_is_refused(tiny_cfg):
    run = train(tiny_cfg("trainer.max_epochs=1"))
    ckpt = run / "checkpoints" / "last.ckpt"
    cfg = tiny_cfg("model.arch=resnet34", f"resume={ckpt}")
    with pytest.raises(ConfigError, match="model.arch=resnet18"):
        check_resume_compatible(cfg, read_checkpoint(ckpt), str(ckpt))
    cfg = tiny_cfg("optim.classifier_optimizer=adam", f"resume={ckpt}")  # its state would not fit (KeyError)
    with pytest.raises(ConfigError, match="optim.classifier_optimizer=sgd"):
        check_resume_compatible(cfg, read_checkpoint(ckpt), str(ckpt))
    cfg = tiny_cfg("optim.masker_lr=0.002", "casm.lambda_r=3", f"resume={ckpt}")  # the state would override them
    with pytest.raises(ConfigError, match=r"casm.lambda_r: None -> 3.0; optim.masker_lr: 0.001 -> 0.002 would not"):
        check_resume_compatible(cfg, read_checkpoint(ckpt), str(ckpt))
    (run / "broken.ckpt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="broken.ckpt"):
        read_checkpoint(run / "broken.ckpt")


def test_a_nonfinite_step_is_skipped_and_counted(tiny_cfg, monkeypatch):
    calls = {"n": 0}
    original = module_lib.remove_masked

    def nan_once(x, mask, *fill):
        calls["n"] += 1
        return original(x, mask, *fill) * (float("nan") if calls["n"] == 1 else 1.0)

    monkeypatch.setattr(module_lib, "remove_masked", nan_once)
    module = fit(tiny_cfg("casm.thinning=L"), steps=3)
    assert module.nonfinite_total == 1 and module.casm_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_repeated_nonfinite_steps_stop_the_run_and_keep_the_weights(tiny_cfg, monkeypatch):
    monkeypatch.setattr(module_lib, "remove_masked", lambda x, mask, *fill: x * float("nan"))
    cfg = tiny_cfg("casm.thinning=L", "casm.max_nonfinite_steps=2")
    pl.seed_everything(0, verbose=False)
    before = params(CASMModule(dict(cfg), 10))
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps"):
        train(cfg)
    saved = read_checkpoint(next(Path(cfg.logging.out_dir).rglob("interrupted.ckpt")))
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in before.items() if k in saved["state_dict"])


DDP_RUN = ["trainer.devices=2", "trainer.strategy=ddp", "casm.thinning=L100", "casm.snapshot_every=2",
           "casm.pool_size=3", "casm.lambda_mode=target_area"]


def test_ddp_on_two_cpu_processes(tmp_path, tiny_overrides):
    """Two ranks train, agree on weights/pool/lambda_R every epoch (checked in the module), checkpoint."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CASM_RUN_VERSION", None)
    cmd = [sys.executable, str(REPO / "train.py"), *tiny_overrides, *DDP_RUN]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = list((tmp_path / "runs").rglob("last.ckpt"))
    assert len(ckpts) == 1
    state = read_checkpoint(ckpts[0])
    assert state["epoch"] == 1 and len(read_pool(ckpts[0])) == 3
    # data.batch_size=16 is the global batch (8 per rank): 4 steps per epoch, as on one process, and the
    # snapshot schedule and pool sampling are those of the same run on one process
    single = read_checkpoint(train(load_config(None, [*tiny_overrides, *DDP_RUN[2:], "logging.name=single"]))
                             / "checkpoints" / "last.ckpt")
    for saved in (state, single):
        assert saved["casm_state"]["casm_step"] == 8
    assert state["casm_state"]["pool"]["snapshot_steps"] == single["casm_state"]["pool"]["snapshot_steps"]
    assert torch.equal(state["casm_state"]["pool"]["generator"], single["casm_state"]["pool"]["generator"])
    # the logged validation LE is the whole validation set's, reduced across the two ranks
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(ckpts[0].resolve().parent.parent))
    events.Reload()
    logged = events.Scalars("val/le")[-1].value
    assert logged == pytest.approx(_single_process_le(ckpts[0]), abs=1e-6)


def _single_process_le(ckpt: Path) -> float:
    from casm.metrics.localization import LocalizationMetric
    from casm.trained_run import read_run

    module = read_run(ckpt)
    dm = LocalizationDataModule(load_config(None, [f"{k}={v}" for k, v in _flat("data", module.config["data"])]).data)
    dm.setup()
    metric = LocalizationMetric()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            x = normalize_images(batch["image"])
            _, feats = module.classifier(x)
            metric.update(batch["boxes"], batch["box_valid"], maps=module.masker(x, feats))
    return float(metric.compute()["le"])


def _flat(prefix: str, node: dict):
    for key, value in node.items():
        if value is not None and not isinstance(value, (dict, list)):
            yield f"{prefix}.{key}", value


def test_a_full_disk_leaves_no_half_written_checkpoint(tiny_overrides, monkeypatch, capsys):
    """torch.save writes part of the file, then the disk is full: no checkpoint appears under its name
    (nor a partial file beside it), the user reads which checkpoint failed and why, and an earlier
    checkpoint stays intact."""
    import errno

    from casm.checkpoints import read_checkpoint
    from casm.cli import train_main
    from casm.training import checkpoint_io

    real_save = torch.save
    calls = []

    def disk_full_after_first(obj, f):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f)
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full_after_first)
    assert train_main(tiny_overrides + ["trainer.max_epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "epoch001.ckpt" in err and "No space left" in err
    folder = next(iter(__import__("pathlib").Path(tiny_overrides[-1].split("=", 1)[1]).rglob("checkpoints")))
    assert sorted(p.name for p in folder.iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 0  # the earlier checkpoint is whole


def test_a_disk_that_fills_inside_torchs_zip_writer_is_a_write_error(tmp_path, full_disk):
    """torch.save to a file whose write fails raises a RuntimeError ('unexpected pos ...') over the OSError:
    it must still be reported as a full disk, with nothing left under the file's name."""
    from casm import checkpoints
    from casm.errors import CheckpointWriteError

    full_disk(4096)
    target = tmp_path / "epoch003.ckpt"
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*epoch003.ckpt \(No space left"):
        checkpoints.write_atomically(target, lambda f: torch.save({"w": torch.zeros(100_000)}, f))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, hint", [
    (errno.ENOSPC, "free space in {folder} or set logging.out_dir elsewhere"),
    (errno.ENOENT, "{folder} does not exist any more"),
    (errno.EACCES, "{folder} is not writable: set logging.out_dir elsewhere"),
])
def test_a_failed_write_gets_the_hint_of_its_cause(tmp_path, code, hint):
    from casm import checkpoints
    from casm.errors import CheckpointWriteError

    def fails(f):
        raise OSError(code, os.strerror(code))

    with pytest.raises(CheckpointWriteError) as caught:
        checkpoints.write_atomically(tmp_path / "x.ckpt", fails)
    message = str(caught.value)
    assert hint.format(folder=tmp_path) in message and message.count("free space") == (code == errno.ENOSPC)
    assert list(tmp_path.iterdir()) == []


def test_an_overflowing_batchnorm_statistic_skips_the_step(tiny_cfg, monkeypatch):
    """Diverging weights can overflow BatchNorm's running variance while the loss stays finite: the step
    is skipped, the statistics restored, so no checkpoint ever holds them."""
    calls = {"n": 0}
    original = ResNetClassifier.forward

    def overflow_once(self, x):
        out = original(self, x)
        calls["n"] += 1
        if calls["n"] == 1:
            self.trunk.bn1.running_var.data.fill_(float("inf"))  # .data: autograd keeps its saved copy
        return out

    monkeypatch.setattr(ResNetClassifier, "forward", overflow_once)
    module = fit(tiny_cfg("casm.thinning=L"), steps=3)
    assert module.nonfinite_total == 1
    assert all(torch.isfinite(b).all() for b in module.classifier.buffers() if b.is_floating_point())


def test_validation_every_n_epochs_and_bounded_step_checkpoints(tiny_cfg, capsys, caplog, recwarn):
    """check_val_every_n_epoch=2 validates after epoch 1 only, the console says so for the others
    instead of repeating stale numbers, every epoch is still checkpointed (Lightning's default would
    skip the unvalidated last one), only the newest keep_step_checkpoints step files remain, and
    Lightning's advice to save the weights before each manual step is not shown (casm saves after),
    nor its cloud tips, its "1.0 means 100 %" lines or torch's deprecation inside Lightning."""
    run = train(tiny_cfg("trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2",
                         "trainer.checkpoint_every_n_steps=1", "trainer.keep_step_checkpoints=2"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert "no validation" in lines[0] and "LE " not in lines[0] and "no validation" in lines[2]
    assert "LE " in lines[1] and "no validation" not in lines[1]
    steps = sorted(p.name for p in (run / "checkpoints").glob("step*.ckpt"))
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    final_step = last["global_step"]
    assert last["epoch"] == 2 and final_step == 24  # 3 epochs x 4 batches x 2 optimizer steps
    assert steps == [f"step{final_step - 2:07d}.ckpt", f"step{final_step:07d}.ckpt"]
    assert not [w for w in recwarn if "manual optimization" in str(w.message) or "LeafSpec" in str(w.message)]
    assert caplog.records and not [r for r in caplog.records if "Tip" in r.getMessage() or "100%" in r.getMessage()]


def test_the_masker_can_keep_its_learning_rate_while_the_classifier_decays(tiny_cfg):
    """optim.masker_lr_gamma=1: only the classifier's lr steps down (the default run's damping)."""
    run = train(tiny_cfg("optim.lr_step_epochs=1", "optim.masker_lr_gamma=1.0", "optim.classifier_lr=0.01",
                         "optim.masker_lr=0.002"))
    classifier_opt, masker_opt = read_checkpoint(run / "checkpoints" / "last.ckpt")["optimizer_states"]
    assert classifier_opt["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.1 ** 2)
    assert masker_opt["param_groups"][0]["lr"] == pytest.approx(0.002)


def test_masked_out_images_leave_the_classifier_running_statistics_alone(tiny_cfg, monkeypatch):
    """BatchNorm running statistics track clean images only: with the current classifier as evaluator
    (p_pool=0), one CASM step changes them exactly as one clean forward pass does."""
    from casm.models.modes import frozen_batchnorm_statistics

    bn = torch.nn.BatchNorm1d(3)
    x = torch.randn(8, 3) * 5 + 2
    with frozen_batchnorm_statistics(bn):
        out = bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0
    assert torch.allclose(out.mean(0), torch.zeros(3), atol=1e-5)  # still normalized with the batch's statistics
    assert bn.momentum == 0.1

    cfg = tiny_cfg("casm.thinning=L", "casm.p_pool=0")
    seen = []
    original = module_lib.remove_masked
    monkeypatch.setattr(module_lib, "remove_masked",
                        lambda x, mask, *fill: seen.append(x.clone()) or original(x, mask, *fill))
    pl.seed_everything(0, verbose=False)
    start = CASMModule(dict(cfg), 10)
    trained = fit(cfg, steps=1)
    start.classifier.train()
    with torch.no_grad():
        start.classifier(seen[0])  # the same clean batch, once
    for key, value in start.classifier.state_dict().items():
        if "running" in key:
            assert torch.allclose(value, trained.classifier.state_dict()[key], atol=1e-6), key


@pytest.mark.parametrize("env, version", [
    ({"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc", "LOCAL_RANK": "1"}, "job_abc"),  # torchrun, rank 1
    ({"SLURM_NTASKS": "16", "SLURM_JOB_ID": "4242"}, "job_4242"),  # srun, any rank
    ({"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}, "version_0"),  # no shared id: the next free folder
    ({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242"}, "version_0"),  # one process: as on a laptop
])
def test_ranks_started_by_a_cluster_launcher_share_one_run_folder(tiny_cfg, monkeypatch, env, version):
    from casm.training.run import _run_dir

    for key in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_JOB_ID", "CASM_RUN_VERSION"):
        monkeypatch.setenv(key, "")  # recorded, so that the test leaves the environment as it found it
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _run_dir(tiny_cfg())[2] == version


def test_a_checkpoint_of_an_earlier_casm_still_loads(trained_checkpoint, tmp_path):
    """Its saved config predates newer keys (and may hold a removed one): today's defaults fill them in."""
    from casm.trained_run import read_run

    ckpt = torch.load(trained_checkpoint, weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    for section, key in (("model", "manipulation"), ("casm", "fill"), ("casm", "lambda_in"), ("casm", "lambda_tv"),
                         ("optim", "lr_reference_batch"), ("data", "shuffle_labels")):
        del config[section][key]
    config["casm"]["a_removed_option"] = 3
    torch.save(ckpt, tmp_path / "old.ckpt")
    module = read_run(tmp_path / "old.ckpt")
    assert module.cfg.casm.fill == "mean" and module.cfg.model.manipulation is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert module.masker(x, module.classifier(x)[1]).shape == (2, 1, 32, 32)
