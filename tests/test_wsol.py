"""MaxBoxAccV2 and PxAP against known answers, and PxAP against scikit-learn's average precision."""

import numpy as np
import pytest
import torch

from casm.metrics.wsol import MaxBoxAccV2, PixelAveragePrecision, contour_boxes

GT = torch.tensor([[[16.0, 16.0, 48.0, 48.0]]])  # one box per image, exclusive ends
VALID = torch.ones(1, 1, dtype=torch.bool)


def _box_map(box, value=1.0, size=64):
    m = torch.zeros(size, size)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    return m


def _score(maps, indices=None, gt=GT, valid=VALID):
    metric = MaxBoxAccV2(num_thresholds=20)
    maps = torch.stack(maps)
    n = len(maps)
    metric.update(maps, gt.expand(n, -1, -1), valid.expand(n, -1),
                  torch.tensor(indices if indices is not None else list(range(n))))
    return {k: float(v) for k, v in metric.compute().items()}


def test_contour_boxes_cover_every_component_with_exclusive_ends():
    binary = np.zeros((10, 12), bool)
    binary[1:3, 2:5] = True
    binary[6:9, 8:11] = True
    boxes = sorted(contour_boxes(binary).tolist())
    assert boxes == [[2, 1, 5, 3], [8, 6, 11, 9]]
    assert contour_boxes(np.zeros((4, 4), bool)).tolist() == [[0, 0, 0, 0]]


def test_a_map_that_is_the_box_is_right_at_every_iou_level():
    result = _score([_box_map((16, 16, 48, 48))])
    assert result == pytest.approx({"max_box_acc@30": 100, "max_box_acc@50": 100, "max_box_acc@70": 100,
                                    "max_box_acc_v2": 100}, abs=1e-4)


def test_every_component_counts_not_only_the_largest():
    """A larger blob elsewhere: the largest-component rule of LE would miss, MaxBoxAccV2 does not."""
    m = _box_map((16, 16, 48, 48), 0.5) + _box_map((0, 50, 64, 64), 0.5)
    assert _score([m])["max_box_acc_v2"] == pytest.approx(100)


def test_an_iou_of_exactly_one_half_counts_at_0_5_not_at_0_7():
    result = _score([_box_map((16, 16, 48, 32))])  # half the box: IoU 512 / 1024
    assert result["max_box_acc@30"] == result["max_box_acc@50"] == pytest.approx(100)
    assert result["max_box_acc@70"] == 0
    assert result["max_box_acc_v2"] == pytest.approx(200 / 3)


def test_held_out_threshold_selection_is_not_tuned_on_the_scored_images():
    """The even image needs a threshold in [0.3, 0.8), the odd one in [0, 0.2): the best single threshold
    gets one of the two (50 %), a threshold chosen on one image and read on the other gets neither."""
    even = torch.full((64, 64), 0.3) + _box_map((16, 16, 48, 48), 0.5)
    odd = _box_map((16, 16, 48, 48), 0.2) + _box_map((28, 28, 36, 36), 0.7)
    result = _score([even, odd], indices=[0, 1])
    assert result["max_box_acc_v2"] == pytest.approx(50)
    assert result["max_box_acc_v2_heldout"] == pytest.approx(0)
    twice = _score([even, odd, odd, even], indices=[0, 1, 2, 3])  # each half holds one of each: no penalty
    assert twice["max_box_acc_v2_heldout"] == pytest.approx(twice["max_box_acc_v2"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pxap_equals_scikit_learns_average_precision(seed):
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(4, 16, 16, generator=g) < 0.3
    levels = torch.randint(0, 50, (4, 16, 16), generator=g) + 25 * masks  # informative, with ties
    maps = (levels.float() + 0.5) / 100  # inside bins, so bins and distinct values order pixels alike
    metric = PixelAveragePrecision(num_thresholds=100)
    metric.update(maps[:2], masks[:2])
    metric.update(maps[2:], masks[2:])
    expected = average_precision_score(masks.flatten().numpy(), maps.flatten().numpy()) * 100
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_pxap_known_answers():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    perfect, flat = PixelAveragePrecision(), PixelAveragePrecision()
    perfect.update(masks.float(), masks)
    flat.update(torch.full((2, 8, 8), 0.5), masks)
    assert float(perfect.compute()) == pytest.approx(100)
    assert float(flat.compute()) == pytest.approx(100 * 16 / 64)  # the object's share of the pixels
