"""LE / OM and their building blocks on hand-made maps and boxes (docs/evaluation.md)."""

import numpy as np
import pytest
import torch

from casm.metrics.localization import (
    LocalizationMetric,
    binarize,
    box_iou,
    largest_component_box,
    predicted_boxes,
    reference_boxes,
)


def test_box_iou_by_hand():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    assert torch.allclose(box_iou(pred, gt), torch.tensor([[25 / 175, 1.0, 0.0]]))


def test_largest_component_is_4_connected():
    b = np.zeros((8, 8), bool)
    b[1:3, 1:3] = True  # 4 px
    b[5:8, 5:8] = True  # 9 px
    b[4, 4] = True  # touches the 9 px block only diagonally: a component of its own under 4-connectivity
    assert largest_component_box(b).tolist() == [5, 5, 8, 8]
    assert largest_component_box(np.zeros((4, 4), bool)).tolist() == [0, 0, 0, 0]


def test_binarize_rules():
    m = torch.tensor([[[0.0, 0.2], [0.4, 1.0]]])  # mean 0.4
    assert binarize(m, "alpha_mean").tolist() == [[[False, False], [True, True]]]
    assert binarize(m, "alpha_mean", alpha=2.0).tolist() == [[[False, False], [False, True]]]
    q = binarize(m, "quantile")  # threshold at the 0.6 quantile = 0.28: area 2/4 ~ mean 0.4
    assert q.tolist() == [[[False, False], [True, True]]]
    with pytest.raises(ValueError):
        binarize(m, "otsu")


def test_predicted_box_of_a_blob():
    maps = torch.zeros(1, 16, 16)
    maps[0, 4:10, 2:7] = 1.0
    assert predicted_boxes(maps, "alpha_mean").tolist() == [[2.0, 4.0, 7.0, 10.0]]


def test_localization_error_and_om():
    metric = LocalizationMetric(rule="alpha_mean")
    maps = torch.zeros(3, 16, 16)
    maps[0, 0:8, 0:8] = 1  # exactly the box: hit
    maps[1, 0:8, 0:8] = 1  # hit, but the classifier is wrong: OM error
    maps[2, 8:16, 8:16] = 1  # far from the box: miss
    gt = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(3, 1, 4)
    valid = torch.ones(3, 1, dtype=torch.bool)
    metric.update(gt, valid, maps=maps, correct=torch.tensor([True, False, True]))
    out = metric.compute()
    assert out["le"].item() == pytest.approx(1 / 3)
    assert out["om"].item() == pytest.approx(2 / 3)


def test_any_ground_truth_box_counts_and_padding_is_ignored():
    metric = LocalizationMetric(rule="alpha_mean")
    maps = torch.zeros(1, 16, 16)
    maps[0, 8:16, 8:16] = 1
    gt = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [8.0, 8.0, 16.0, 16.0]]])
    metric.update(gt, torch.tensor([[True, False]]), maps=maps)  # the matching box is padding
    assert metric.compute()["le"].item() == 1.0
    metric.reset()
    metric.update(gt, torch.tensor([[True, True]]), maps=maps)
    assert metric.compute()["le"].item() == 0.0


def test_reference_boxes():
    assert reference_boxes("full", 1, 224, 224).tolist() == [[0, 0, 224, 224]]
    assert reference_boxes("centre", 1, 224, 224).tolist() == [[33, 33, 191, 191]]


def test_quantile_binarization_matches_torch_quantile_and_takes_any_size():
    from casm.metrics.localization import binarize, row_quantiles

    maps = torch.rand(3, 17, 23)
    flat = maps.flatten(1)
    for q in (0.0, 0.13, 0.5, 0.999, 1.0):
        expected = torch.stack([torch.quantile(row, q) for row in flat])
        assert torch.allclose(row_quantiles(flat, torch.full((3, 1), q))[:, 0], expected, atol=1e-6)
    big = torch.linspace(0, 1, 4097 * 4097).view(1, 4097, 4097)  # more pixels than torch.quantile takes (2**24)
    binary = binarize(big)  # mean 0.5: the upper half of the ramp is kept
    assert binary[0, 2100:].all() and not binary[0, :2000].any()
