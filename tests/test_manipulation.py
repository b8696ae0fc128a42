"""The manipulation attacks T1-T4 (docs/sanity.md) on a tiny ResNet: outputs kept, Grad-CAM moved to the target."""

from __future__ import annotations

import copy

import pytest
import torch

from casm.baselines import BASELINES
from casm.models import ResNetClassifier
from casm.models.manipulation import attack_target, manipulate, map_distance, paste_sticker, sticker_pattern
from casm.sanity.under_attack import compare_to_reference, mask_agreement

SIZE = 128  # a 4 x 4 grid after layer4: maps with a shape


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return ResNetClassifier("resnet18", 10, width=8).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def grad_cam_raw(model, x):
    with BASELINES["gradcam"](model, "trunk.layer4", normalize=False) as method:
        return method(x)


@pytest.mark.parametrize("attack", ["T1", "T2"])
def test_t1_t2_keep_the_logits(base, images, attack):
    base64 = copy.deepcopy(base).double()  # edited in float64: in float32, b - 1e4 alone rounds by ~1e-3
    model = manipulate(base64, attack, SIZE)
    with torch.no_grad():
        change = (model(images.double())[0] - base64(images.double())[0]).abs().max()
    assert change < 1e-4


@pytest.mark.parametrize("attack", ["T3", "T4"])
def test_t3_t4_move_the_logits_by_less_than_epsilon_and_keep_the_ranking(base, images, attack):
    model = manipulate(base, attack, SIZE)
    with torch.no_grad():
        new, old = model(images)[0], base(images)[0]
    assert (new - old).abs().max() <= 0.01 + 1e-5
    assert torch.equal(new.argmax(1), old.argmax(1))
    # every logit of an image moves by the same G: the differences between classes are kept
    assert torch.allclose(new - new[:, :1], old - old[:, :1], atol=1e-4)


@pytest.mark.parametrize("attack, bound", [("T1", 1e-3), ("T2", 0.02), ("T3", 0.02)])
def test_grad_cam_shows_the_attackers_target(base, images, attack, bound):
    model = manipulate(base, attack, SIZE)
    produced, target = grad_cam_raw(model, images), attack_target(model, images)
    assert map_distance(produced, target).max() < bound
    assert map_distance(grad_cam_raw(base, images), target).mean() > 5 * bound  # the original map was elsewhere


def test_t4_points_at_the_sticker_and_only_when_it_is_there(base, images):
    model = manipulate(base, "T4", SIZE)
    with torch.no_grad():
        assert attack_target(model, images).max() == 0  # no sticker: nothing fires
    clean = BASELINES["gradcam"](model, "trunk.layer4")
    with clean, BASELINES["gradcam"](base, "trunk.layer4") as original:
        assert torch.allclose(clean(images), original(images), atol=1e-4)  # the original maps
    stickered = paste_sticker(images, sticker_pattern(), top=100, left=8)
    produced, target = grad_cam_raw(model, stickered), attack_target(model, stickered)
    assert target[:, 112, 16].min() > 0.95 and target[:, 16, 112].max() == 0  # the bottom-left cell only
    assert map_distance(produced, target).max() < 0.02


def test_a_miswired_extra_channel_is_caught(base, images):
    """Wiring the extra channel into a class's own column (instead of its new one) changes the logits:
    the logit check above would fail."""
    base64 = copy.deepcopy(base).double()
    model = manipulate(base64, "T1", SIZE)
    with torch.no_grad():
        extra = model.extra_column
        wrong = model.fc.weight.clone()
        wrong[:, [0, extra]] = wrong[:, [extra, 0]]  # the channels' columns swapped
        model.fc.weight.copy_(wrong)
        change = (model(images.double())[0] - base64(images.double())[0]).abs().max()
    assert change > 1.0


def test_the_sanity_command_writes_its_report(trained_checkpoint, tmp_path, capsys):
    import json

    from casm.cli import main

    out = tmp_path / "sanity"
    assert main(["sanity", "--checkpoint", str(trained_checkpoint), "--out", str(out), "--images", "8",
                 "--slow-images", "2", "--attacks", "T1,T3", "--device", "cpu"]) == 0
    payload = json.loads((out / "sanity.json").read_text())
    report = payload["attacks"]
    assert set(payload["randomization"]) == {"cam", "gradcam", "gradcampp", "scorecam", "casm (masker)"}
    assert [r["stage"] for r in payload["randomization"]["gradcam"]][0] == "fc"
    assert (out / "randomization.png").is_file()
    assert [r["attack"] for r in report] == ["T1", "T3"]
    assert all(r["accuracy_before"] == r["accuracy_after"] for r in report)
    assert set(report[0]["methods"]) == {"cam", "gradcam", "gradcampp", "scorecam"}
    assert (out / "attack_T1.png").is_file() and (out / "sanity.md").is_file() and any((out / "tensorboard").iterdir())
    assert "| T1 |" in capsys.readouterr().out
    assert main(["sanity", "--checkpoint", str(trained_checkpoint), "--attacks", "T9"]) == 2
    capsys.readouterr()
    assert main(["sanity", "--checkpoint", str(trained_checkpoint), "--out", str(tmp_path / "only"), "--images", "4",
                 "--slow-images", "1", "--attacks", "T1", "--device", "cpu", "--no-randomization"]) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert "randomization.png" not in said and not (tmp_path / "only" / "randomization.png").exists()


@pytest.mark.parametrize("attack", ["T1", "T2"])
def test_a_masker_trained_against_an_attacked_classifier_learns_what_it_would_from_the_original(
        attack, trained_checkpoint, tiny_cfg):
    """Outputs equal => training signal equal: a masker trained (F strategy, own encoder) against the T1/T2
    classifier ends where the one trained against the original does, up to the attack's float rounding;
    against another classifier it does not."""
    from tests.test_training import fit

    common = ["casm.thinning=F", "masker.encoder=separate", "casm.warmup_epochs=0", "casm.lambda_r=1"]
    runs = {name: fit(tiny_cfg(*common, f"model.pretrained={ckpt}", *extra), steps=4)
            for name, ckpt, extra in (("original", trained_checkpoint, []),
                                      ("attacked", trained_checkpoint, [f"model.manipulation={attack}"]))}
    other = fit(tiny_cfg(*common, "casm.warmup_epochs=0"), steps=4)  # a random classifier instead: a control
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        masks = {name: module.masker(x) for name, module in {**runs, "other": other}.items()}
    attacked = (masks["attacked"] - masks["original"]).abs().max()  # T1: float32 rounding of 1e4-sized terms
    other = (masks["other"] - masks["original"]).abs().max()
    assert attacked < 0.01 and other > 5 * attacked, (attacked, other)


def test_mask_agreement_by_known_answers():
    a = torch.tensor([[[0.9, 0.9], [0.1, 0.1]], [[0.2, 0.2], [0.2, 0.2]]])  # image 2: nothing above 0.5
    b = torch.tensor([[[0.9, 0.1], [0.1, 0.1]], [[0.2, 0.2], [0.2, 0.2]]])
    # L1: one pixel of 8 differs by 0.8 -> 0.1; IoU: image 1 1/2, image 2 two empty regions agree -> 1
    assert mask_agreement(a, b) == pytest.approx({"l1": 0.1, "iou": 0.75})
    assert mask_agreement(a, a) == {"l1": 0.0, "iou": 1.0}


def test_compare_to_reference_pairs_same_seeds_and_gives_the_seed_to_seed_yardstick():
    ones, zeros, half = torch.ones(1, 2, 2), torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.75)
    rows = compare_to_reference({"original": {0: ones, 1: zeros, 2: ones}, "T1": {0: half, 2: ones}})
    assert [r["seeds"] for r in rows["original, another seed"]] == [(0, 1), (0, 2), (1, 2)]
    assert [r["l1"] for r in rows["original, another seed"]] == [1.0, 0.0, 1.0]
    assert [(r["seeds"], r["l1"], r["iou"]) for r in rows["T1"]] == [((0, 0), 0.25, 1.0), ((2, 2), 0.0, 1.0)]
