"""The masker objective against values computed by hand (docs/training.md)."""

import math

import pytest
import torch

from casm.fills import remove_masked
from casm.training.losses import entropy, logit_excess, masker_loss


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


def test_area_gate_all_counts_every_image_by_hand():
    logits_out, labels, clean_correct, mask = _case()
    loss = masker_loss(logits_out, labels, clean_correct, mask, 10.0, area_gate="all")
    assert torch.isclose(loss.area, mask.flatten(1).mean(dim=1).mean())
    mask2 = mask.clone()
    mask2[0] = 1.0  # an image that is not confused now pays for its mask too
    assert masker_loss(logits_out, labels, clean_correct, mask2, 10.0, area_gate="all").area > loss.area
    with pytest.raises(ValueError, match="area_gate"):
        masker_loss(logits_out, labels, clean_correct, mask, 10.0, area_gate="some")


def test_logit_excess_by_hand():
    z = torch.tensor([-5.0, -1.0, 0.0, 3.0, 6.0])
    assert logit_excess(z, 4.0) == pytest.approx((1.0 + 0 + 0 + 0 + 4.0) / 5)  # relu(|z| - 4)^2, averaged
    assert logit_excess(z, 6.0) == 0.0


def test_logit_bound_adds_the_excess_with_weight_one():
    logits_out, labels, clean_correct, mask = _case()
    z = torch.full_like(mask, 7.0)
    plain = masker_loss(logits_out, labels, clean_correct, mask, 10.0)
    bounded = masker_loss(logits_out, labels, clean_correct, mask, 10.0, mask_logits=z, logit_bound=4.0)
    assert bounded.logit_excess == pytest.approx(9.0)
    assert bounded.total == pytest.approx(float(plain.total) + 9.0)


def test_a_saturated_mask_gets_a_gradient_only_from_the_logit_bound():
    """All-on logits (z = 12): the area term's gradient through the sigmoid has all but vanished
    (sigmoid'(12) ~ 6e-6), so nothing brings the mask back; the bound's pull is 2 (|z| - bound) / N."""
    logits_out, labels = torch.zeros(2, 3), torch.tensor([0, 1])
    clean_correct = torch.tensor([True, True])
    z = torch.full((2, 1, 4, 4), 12.0, requires_grad=True)
    free = torch.autograd.grad(masker_loss(logits_out, labels, clean_correct, torch.sigmoid(z), 1.0,
                                           area_gate="all").total, z)[0]
    z2 = z.detach().clone().requires_grad_(True)
    bounded = torch.autograd.grad(masker_loss(logits_out, labels, clean_correct, torch.sigmoid(z2), 1.0,
                                              area_gate="all", mask_logits=z2, logit_bound=4.0).total, z2)[0]
    assert free.abs().max() < 1e-6
    assert torch.allclose(bounded - free, torch.full_like(z, 2 * (12.0 - 4.0) / z.numel()))


def test_remove_masked_replaces_with_zero_mean():
    x = torch.ones(1, 3, 2, 2)
    m = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    assert torch.equal(remove_masked(x, m)[0, 0], torch.tensor([[0.0, 1.0], [0.5, 1.0]]))


def test_masked_in_term_is_the_cross_entropy_of_the_masked_in_logits_by_hand():
    logits_out, labels, clean_correct, mask = _case()
    logits_in = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    base = masker_loss(logits_out, labels, clean_correct, mask, lambda_r=10.0)
    out = masker_loss(logits_out, labels, clean_correct, mask, lambda_r=10.0, logits_in=logits_in, lambda_in=2.0)
    by_hand = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2)) + math.log(2)) / 3  # CE for label 0, all 3
    assert out.masked_in.item() == pytest.approx(by_hand, abs=1e-6)
    assert (out.total - base.total).item() == pytest.approx(2.0 * by_hand, abs=1e-5)


def test_total_variation_by_hand():
    from casm.training.losses import total_variation

    mask = torch.tensor([[[[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]]])  # (1, 1, 2, 3)
    # vertical |differences|: 0, 1, 0 -> mean 1/3; horizontal: 1, 0, 0, 1 -> mean 1/2
    assert total_variation(mask).item() == pytest.approx(1 / 3 + 1 / 2)
    _, labels, clean_correct, _ = _case()
    logits = torch.zeros(1, 2)
    out = masker_loss(logits, labels[:1], clean_correct[:1], mask, lambda_r=0.0, lambda_tv=0.5)
    assert out.tv.item() == pytest.approx(5 / 6) and out.total.item() == pytest.approx(-math.log(2) + 0.5 * 5 / 6)


@pytest.mark.parametrize("height, width, sigma, kernel", [(16, 16, 1.0, 5), (64, 64, 4.0, 17), (224, 224, 14.0, 57),
                                                           (40, 24, 1.5, 7)])
def test_the_separable_blur_is_torchvisions_gaussian_blur(height, width, sigma, kernel):
    from torchvision.transforms.functional import gaussian_blur

    from casm.fills import blur

    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(blur(x), gaussian_blur(x, [kernel, kernel], [sigma, sigma]), atol=1e-5)


@pytest.mark.parametrize("kind", ["mean", "blur", "telea", "noise"])
def test_each_fill_replaces_exactly_the_removed_pixels(kind):
    from casm.fills import fill_for, keep_masked

    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:10, 4:10] = 1.0  # removed in the masked-out image, kept in the masked-in one
    out, kept = remove_masked(x, mask, kind), keep_masked(x, mask, kind)
    inside = mask.expand_as(x).bool()
    assert torch.equal(out[~inside], x[~inside]) and torch.equal(kept[inside], x[inside])
    if kind == "mean":
        assert (out[inside] == 0).all() and (kept[~inside] == 0).all()
    elif kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        assert torch.allclose(out[inside], gaussian_blur(x, [5, 5], [1.0, 1.0])[inside])  # 16 px: sigma 1, kernel 5
    elif kind == "telea":
        assert not torch.allclose(out[inside], torch.zeros(1)) and torch.equal(fill_for(x, mask, kind)[~inside],
                                                                               fill_for(x, mask, kind)[~inside])
    else:  # noise: about N(0, 1) where removed
        assert 0.7 < float(out[inside].std()) < 1.3 and not torch.equal(out[inside], x[inside])


def test_the_mask_gets_gradient_through_every_fill_and_the_fill_none():
    from casm.fills import FILLS, fill_for

    x = torch.rand(1, 3, 8, 8)
    for kind in FILLS:
        mask = torch.full((1, 1, 8, 8), 0.6, requires_grad=True)
        remove_masked(x, mask, kind).sum().backward()
        assert mask.grad is not None and mask.grad.abs().sum() > 0, kind
        fill = fill_for(x, mask, kind)
        assert fill is None or not fill.requires_grad
