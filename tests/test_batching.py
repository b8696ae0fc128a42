"""The global batch and the learning-rate rule (casm/training/batching.py)."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from casm.config import ConfigError
from casm.distributed import per_device_batch
from casm.training.batching import batch_plan
from casm.training.lficam_module import LFICAMModule
from casm.training.module import CASMModule


@pytest.mark.parametrize("world, expected", [(1, 128), (2, 64), (8, 16)])
def test_the_global_batch_splits_over_devices(world, expected):
    assert per_device_batch(128, world) == expected


def test_a_batch_that_does_not_split_is_refused_with_a_fix():
    with pytest.raises(ConfigError, match=r"data.batch_size=100 .* 8 processes.*data.batch_size=96"):
        per_device_batch(100, 8)


def test_no_reference_batch_means_the_lrs_as_given(tiny_cfg):
    plan = batch_plan(tiny_cfg("optim.classifier_lr=0.003", "optim.masker_lr=0.002"))
    assert (plan.global_batch, plan.reference_batch) == (16, 16)
    assert (plan.classifier_lr, plan.masker_lr) == (0.003, 0.002)


@pytest.mark.parametrize("c_rule, m_rule, c_factor, m_factor", [
    ("linear", "sqrt", 8, math.sqrt(8)), ("none", "linear", 1, 8), ("sqrt", "none", math.sqrt(8), 1)])
def test_the_lr_rules_at_eight_times_the_reference_batch(tiny_cfg, c_rule, m_rule, c_factor, m_factor):
    cfg = tiny_cfg("data.batch_size=1024", "optim.lr_reference_batch=128", "optim.classifier_lr=0.001",
                   "optim.masker_lr=0.002", f"optim.classifier_lr_scaling={c_rule}",
                   f"optim.masker_lr_scaling={m_rule}")
    plan = batch_plan(cfg)
    assert plan.classifier_lr == pytest.approx(0.001 * c_factor)
    assert plan.masker_lr == pytest.approx(0.002 * m_factor)
    text = plan.describe(8, cfg.optim)
    assert "global batch 1024 = 8 x 128 per device" in text and "N steps at batch 128 = N / 8 steps here" in text


def test_the_imagenet_config_is_the_papers_batch_and_lr_at_any_gpu_count():
    from casm.config import load_config

    cfg = load_config("configs/imagenet.yaml", ["data.root=/nonexistent"])
    plan = batch_plan(cfg)
    assert (plan.global_batch, plan.reference_batch, plan.classifier_lr, plan.masker_lr) == (128, 128, 1e-3, 1e-3)
    assert [per_device_batch(128, w) for w in (1, 2, 4, 8)] == [128, 64, 32, 16]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_casm_and_lficam_classifiers_get_the_same_scaled_optimizer(tiny_cfg, optimizer):
    """One rule: LFI-CAM's classifier used to take optim.classifier_lr unscaled."""
    cfg = tiny_cfg(f"optim.classifier_optimizer={optimizer}", "data.batch_size=32", "optim.lr_reference_batch=16",
                   "optim.classifier_lr_scaling=linear", "optim.classifier_lr=0.001")
    config = OmegaConf.to_container(cfg)
    casm_opt = CASMModule(config, num_classes=10).configure_optimizers()[0][0]
    lfi_opt = LFICAMModule(config, num_classes=10).configure_optimizers()[0][0]
    for opt in (casm_opt, lfi_opt):
        assert type(opt) is {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
        assert opt.param_groups[0]["lr"] == pytest.approx(0.002)


def test_lficam_skips_a_batch_whose_images_were_all_unreadable(tiny_cfg):
    module = LFICAMModule(OmegaConf.to_container(tiny_cfg("mode=lficam")), num_classes=10)
    batch = {"image": torch.zeros(0, 3, 32, 32), "label": torch.zeros(0, dtype=torch.long)}
    assert module.training_step(batch, 0) is None
