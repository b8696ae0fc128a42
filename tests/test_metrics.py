"""Known answers for F1, the threshold sweep, mask statistics and the faithfulness metrics."""

import math

import pytest
import torch
from torch import nn

from casm.metrics.faithfulness import (
    average_drop_increase,
    deletion_insertion,
    energy_pointing_game,
    judge_hits,
    masked_variants,
    pointing_game,
)
from casm.metrics.localization import BoxAccuracySweep, ContinuousF1, continuous_f1
from casm.metrics.mask_statistics import MaskStatistics


def test_continuous_f1_by_hand():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0:2, 0:2] = 1.0  # mass 4, all inside box A (area 8): P = 1, R = 0.5, F1 = 2/3
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 4.0], [2.0, 2.0, 4.0, 4.0]]])  # box B holds none of it: F1 = 0
    best, mean = continuous_f1(maps, boxes, torch.tensor([[True, True]]))
    assert best.item() == pytest.approx(2 / 3) and mean.item() == pytest.approx(1 / 3)
    metric = ContinuousF1()
    metric.update(maps, boxes, torch.tensor([[True, False]]))
    assert metric.compute()["f1a"].item() == pytest.approx(2 / 3)


def test_threshold_sweep_picks_the_right_threshold():
    maps = torch.zeros(2, 16, 16)
    maps[:, 4:12, 4:12] = 0.3  # the object, weakly
    maps[:, 0:16, 0:16] += 0.2  # a haze everywhere: only thresholds in (0.2, 0.5] isolate the object
    gt = torch.tensor([[4.0, 4.0, 12.0, 12.0]]).expand(2, 1, 4)
    sweep = BoxAccuracySweep(num_thresholds=9)  # 0.1, 0.2, ..., 0.9
    sweep.update(maps, gt, torch.ones(2, 1, dtype=torch.bool))
    acc = sweep.compute()
    assert acc.tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert 0.2 < sweep.best_threshold() <= 0.5 and sweep.accuracy_at(0.8) == 0


def test_mask_statistics_by_hand():
    stats = MaskStatistics()
    binary = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # mean .5, entropy 0, TV: horizontal 1, vertical 0
    half = torch.full((1, 2, 2), 0.5)  # mean .5, entropy ln 2, TV 0
    stats.update(torch.cat([binary, half]))
    out = stats.compute()
    assert out["mask_mean"].item() == pytest.approx(0.5)
    assert out["mask_std"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["mask_entropy"].item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert out["mask_tv"].item() == pytest.approx(0.5)


class SumModel(nn.Module):
    """logits [log s, 0] with s the sum of the image: p(class 0) = s / (s + 1)."""

    def forward(self, x):
        s = x.sum(dim=(1, 2, 3))
        return torch.stack([torch.log(s.clamp(min=1e-9)), torch.zeros_like(s)], dim=1)


def _image():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    return x


def test_deletion_by_hand():
    x, target = _image(), torch.tensor([0])
    good = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # deletes the biggest pixel first
    curves, auc = deletion_insertion(SumModel(), x, good, target, "deletion", steps=4)
    sums = [10, 6, 3, 1, 0]
    expected = [s / (s + 1) for s in sums]
    assert curves[0].tolist() == pytest.approx(expected, abs=1e-6)
    trapezoid = sum((a + b) / 2 for a, b in zip(expected[:-1], expected[1:])) / 4
    assert auc.item() == pytest.approx(trapezoid, abs=1e-6)
    _, worse = deletion_insertion(SumModel(), x, -good, target, "deletion", steps=4)
    assert worse.item() > auc.item()  # deleting the least important pixels first keeps the score up


def test_insertion_starts_blurred_and_ends_at_the_image():
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 4:8, 4:8] = 1.0  # sum 16; blurring keeps the sum roughly but spreads it
    curves, auc = deletion_insertion(SumModel(), x, torch.rand(1, 16, 16), torch.tensor([0]), "insertion", steps=8)
    assert curves[0, -1].item() == pytest.approx(16 / 17, abs=1e-5)
    assert 0 < auc.item() < 1


def test_average_drop_and_increase():
    x, target = _image(), torch.tensor([0, 0])
    x = torch.cat([x, x])
    maps = torch.stack([torch.ones(2, 2), torch.tensor([[0.5, 0.5], [0.5, 0.5]])])
    drop, increase = average_drop_increase(SumModel(), x, maps, target)
    y, o = 10 / 11, 5 / 6
    assert drop.tolist() == pytest.approx([0.0, (y - o) / y * 100], abs=1e-4)
    assert increase.tolist() == [0.0, 0.0]


def test_pointing_games():
    maps = torch.zeros(2, 20, 20)
    maps[0, 5, 5] = 1.0
    maps[1, 18, 18] = 1.0
    maps[1, 2, 2] = 0.5
    gt = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(2, 1, 4)
    valid = torch.ones(2, 1, dtype=torch.bool)
    assert pointing_game(maps, gt, valid).tolist() == [1.0, 0.0]
    assert pointing_game(maps, gt, valid, tolerance=15).tolist() == [1.0, 1.0]
    assert energy_pointing_game(maps, gt, valid).tolist() == pytest.approx([1.0, 0.5 / 1.5])


def test_masked_classification_and_inpainting():
    model = SumModel()
    x = torch.ones(1, 3, 4, 4)
    b = torch.zeros(1, 4, 4)
    b[0, :2] = 1
    out = judge_hits(model, masked_variants(x, b), torch.tensor([0]))
    assert set(out) == {"masked_in", "masked_out", "inpainted"}
    assert all(v.shape == (1,) for v in out.values())


def test_masked_scores_fill_the_removed_pixels_as_the_run_was_trained():
    """A known answer: the model says class 1 iff the image's mean is above 0.75. Removing the left half
    of an all-ones image leaves mean 0.5 with the mean-colour fill (0), 1.0 with the blur fill (a blurred
    constant image is the image)."""

    class MeanThreshold(torch.nn.Module):
        def forward(self, x):
            score = x.flatten(1).mean(dim=1) * 10 - 7.5
            return torch.stack([torch.zeros_like(score), score], dim=1)

    images = torch.ones(2, 3, 8, 8)
    binary = torch.zeros(2, 8, 8)
    binary[:, :, :4] = 1  # the map keeps the left half: masked-out removes it
    labels = torch.ones(2, dtype=torch.long)
    mean = judge_hits(MeanThreshold(), masked_variants(images, binary, inpaint=False), labels)
    blur = judge_hits(MeanThreshold(), masked_variants(images, binary, inpaint=False, fill="blur"), labels)
    assert mean["masked_out"].tolist() == [0.0, 0.0] and blur["masked_out"].tolist() == [1.0, 1.0]
    assert mean["masked_in"].tolist() == [0.0, 0.0] and blur["masked_in"].tolist() == [1.0, 1.0]
