"""The collapse check: known answers for the spread of masks and each failure rule, and a training run whose
masker is forced to collapse says so on the console and in RUN/health.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from casm.metrics.collapse import HEALTH_FILE, MaskHealth, MaskSpread
from casm.models.masker import Masker
from casm.training.run import train

# the default run's last validation (README, seed 0): a healthy masker
HEALTHY = dict(mask_mean=0.222, mask_spread=0.31, accuracy=0.976, masked_out_accuracy=0.234, le=0.208,
               le_centre_box=0.738, lambda_r=3.0, target_area=0.15)


def test_the_spread_of_identical_masks_is_zero_and_of_opposite_masks_one_half():
    spread = MaskSpread(64)
    spread.update(torch.rand(1, 1, 8, 8).expand(6, 1, 8, 8))
    assert float(spread.compute()) == pytest.approx(0, abs=1e-6)
    spread = MaskSpread(16)
    spread.update(torch.zeros(3, 1, 4, 4))
    spread.update(torch.ones(3, 1, 4, 4))  # per pixel: half 0, half 1 -> variance 1/4
    assert float(spread.compute()) == pytest.approx(0.5)


def test_the_spread_over_batches_equals_the_spread_of_all_images():
    masks = torch.rand(10, 1, 5, 7)
    whole, parts = MaskSpread(35), MaskSpread(35)
    whole.update(masks)
    for chunk in masks.split(3):
        parts.update(chunk)
    expected = masks.flatten(1).var(dim=0, unbiased=False).mean().sqrt()
    assert float(whole.compute()) == pytest.approx(float(expected), rel=1e-5)
    assert float(parts.compute()) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("change,reason", [
    ({}, None),
    ({"mask_mean": 0.95}, "all-on masks"),
    ({"mask_mean": 0.004}, "all-off masks"),
    ({"mask_spread": 0.01}, "the same mask for every image"),
    ({"masked_out_accuracy": 0.97}, "masks remove no evidence"),
    ({"le": 0.75}, "no better than the centred box"),
    ({"le": None, "le_centre_box": None}, None),  # data without boxes: the LE rule cannot apply
    # the 2-class masker of seed 0 (docs/unseen.md): mask 0.015 with lambda_R at 0, LE 0.016 below the box
    ({"mask_mean": 0.015, "lambda_r": 0.0}, "near-empty masks (mean 0.015, under 0.25 of the target area 0.15)"),
    ({"le": 0.938, "le_centre_box": 0.954}, "LE 0.938 within 0.04 of the centred box's 0.954"),
    ({"le": 0.692}, None),  # the closest healthy run of the shipped studies: 0.046 below the box (docs/sanity.md)
    ({"mask_mean": 0.069, "lambda_r": 0.007}, None),  # seed 1, which recovered: 0.46 of the target, lambda_R up
    ({"mask_mean": 0.015, "lambda_r": 0.5}, None),  # a penalty still on: the masks are small by its choice
    ({"mask_mean": 0.015, "lambda_r": 0.0, "target_area": None}, None),  # a fixed lambda_R has no floor to sit at
])
def test_each_collapse_rule_fires_alone_and_a_healthy_masker_passes(change, reason):
    reasons = MaskHealth(**{**HEALTHY, **change}).collapse_reasons()
    assert reasons == [] if reason is None else (len(reasons) == 1 and reason in reasons[0]), reasons


def test_a_run_whose_masker_collapsed_says_so_and_records_it(tiny_cfg, monkeypatch, capsys):
    original = Masker.forward

    def all_on(self, x, feats=None):  # a masker that covers 95 % of every image, with gradients
        mask = original(self, x, feats)
        return mask * 0 + 0.95

    monkeypatch.setattr(Masker, "forward", all_on)
    run = train(tiny_cfg("casm.warmup_epochs=1", "trainer.max_epochs=3"))
    health = json.loads((Path(run) / HEALTH_FILE).read_text())
    assert [e["epoch"] for e in health["epochs"]] == [1, 2]  # the warm-up epoch is not judged
    assert health["final"]["lambda_r"] > 0 and health["final"]["target_area"] is None  # a fixed lambda_R
    assert any("all-on masks (mean 0.950" in r for r in health["collapsed"])
    assert any("the same mask for every image" in r for r in health["collapsed"])
    out = capsys.readouterr()
    console = out.out + out.err
    assert "collapse check failed: all-on masks" in console and "WARNING: at its last validation (epoch 2)" in console
    # and an evaluation of its checkpoint says so in its report
    from casm.cli import main

    assert main(["evaluate", "--checkpoint", str(Path(run) / "checkpoints" / "last.ckpt"), "--no-progress",
                 "methods=[casm]", "max_images=16", f"out_dir={Path(run) / 'eval'}"]) == 0
    notes = json.loads((Path(run) / "eval" / "metrics.json").read_text())["notes"]
    assert any(n.startswith("COLLAPSED: the training run's masks") and "all-on" in n for n in notes)
