"""The masker objective against values computed by hand (SPEC 1.2 step 8)."""

import math

import pytest
import torch

from casm.training.losses import entropy, masker_loss, remove_masked


def test_entropy_uniform_and_certain():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(entropy(logits), torch.tensor([math.log(4), 0.0]), atol=1e-6)


def _case():
    # 3 images, 2 classes, all labelled 0.
    labels = torch.tensor([0, 0, 0])
    clean_correct = torch.tensor([True, True, False])
    # image 0: masked-out prediction still right (not confused)
    # image 1: masked-out prediction wrong (confused)
    # image 2: masked-out prediction wrong, but the clean one was wrong too (not confused)
    logits_out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    mask = torch.stack([torch.full((1, 2, 2), v) for v in (0.1, 0.5, 0.9)])
    return logits_out, labels, clean_correct, mask


def _h(a, b):
    p = torch.softmax(torch.tensor([a, b]), 0)
    return float(-(p * p.log()).sum())


def test_entropy_score_and_adaptive_l1_by_hand():
    logits_out, labels, clean_correct, mask = _case()
    out = masker_loss(logits_out, labels, clean_correct, mask, lambda_r=10.0, score="E")
    score = -(_h(2.0, 0.0) + _h(0.0, 1.0)) / 3  # only clean-correct images count, mean over all 3
    area = 0.5 / 3  # only image 1 is confused
    assert out.confused.tolist() == [False, True, False]
    assert out.score.item() == pytest.approx(score, abs=1e-6)
    assert out.area.item() == pytest.approx(area, abs=1e-6)
    assert out.total.item() == pytest.approx(score + 10.0 * area, abs=1e-5)


def test_classification_score_by_hand():
    logits_out, labels, clean_correct, mask = _case()
    out = masker_loss(logits_out, labels, clean_correct, mask, lambda_r=0.0, score="C")
    ce = lambda a, b: float(-torch.log_softmax(torch.tensor([a, b]), 0)[0])  # noqa: E731
    assert out.total.item() == pytest.approx(-(ce(2.0, 0.0) + ce(0.0, 1.0)) / 3, abs=1e-6)


def test_l1_term_ignores_unconfused_images():
    """Growing the mask of a not-confused image must not change the penalty."""
    logits_out, labels, clean_correct, mask = _case()
    base = masker_loss(logits_out, labels, clean_correct, mask, 10.0).area
    mask2 = mask.clone()
    mask2[0] = 1.0
    mask2[2] = 1.0
    assert masker_loss(logits_out, labels, clean_correct, mask2, 10.0).area == base
    mask2[1] = 1.0
    assert masker_loss(logits_out, labels, clean_correct, mask2, 10.0).area > base


def test_remove_masked_replaces_with_zero_mean():
    x = torch.ones(1, 3, 2, 2)
    m = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    assert torch.equal(remove_masked(x, m)[0, 0], torch.tensor([[0.0, 1.0], [0.5, 1.0]]))
