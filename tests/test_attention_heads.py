"""LFI-CAM and ABN heads (docs/heads.md): importance sums to 1, constant maps, range, gradients reach the FIN."""

import pytest
import torch

from casm.models import Masker, ResNetClassifier, build_head
from casm.models.attention import LFIAttention, spatial_min_max


def test_importance_sums_to_one_and_attention_in_unit_range():
    attention = LFIAttention(channels=16, width=8)
    features = torch.relu(torch.randn(3, 16, 4, 4))
    a, w = attention(features, torch.randn(3, 3, 32, 32))
    assert torch.allclose(w.sum(dim=1), torch.ones(3), atol=1e-6)
    assert a.shape == (3, 1, 4, 4) and a.min() >= 0 and a.max() <= 1
    assert torch.allclose(a.flatten(1).max(1).values, torch.ones(3))  # min-max: the peak is 1


def test_constant_feature_maps_are_handled():
    features = torch.zeros(2, 4, 3, 3)
    features[:, 1] = 5.0  # a constant, non-zero channel
    normalized = spatial_min_max(features)
    assert torch.equal(normalized, torch.ones_like(normalized))  # a constant map -> 1 (docs/heads.md)
    a, w = LFIAttention(4, 4)(features, torch.randn(2, 3, 24, 24))
    assert torch.isfinite(a).all() and torch.isfinite(w).all()
    assert torch.equal(a, torch.zeros_like(a))  # a constant attention carries no location: all 0


def test_gradients_reach_the_feature_importance_network():
    head = build_head("lfi", {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}, hidden=8)
    features = {"layer4": torch.relu(torch.randn(2, 32, 2, 2))}
    head(features, torch.randn(2, 3, 64, 64)).mean().backward()
    grads = [p.grad for p in head.attention.fin.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("head", ["lfi", "abn"])
def test_heads_inside_a_masker(head):
    classifier = ResNetClassifier("resnet18", 5, width=4)
    masker = Masker(build_head(head, classifier.trunk.channels, hidden=8))
    x = torch.randn(2, 3, 64, 64)
    mask = masker(x, classifier(x)[1])
    assert mask.shape == (2, 1, 64, 64) and mask.min() >= 0 and mask.max() <= 1


@pytest.mark.parametrize("head, layer, default", [("lfi", "layer3", "layer4"), ("abn", "layer2", "layer3")])
def test_feature_layer_chooses_the_map_the_head_reads(head, layer, default):
    channels = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    sizes = {"stem": 16, "layer1": 16, "layer2": 8, "layer3": 4, "layer4": 2}
    features = {name: torch.relu(torch.randn(2, c, sizes[name], sizes[name])) for name, c in channels.items()}
    image = torch.randn(2, 3, 64, 64)
    module = build_head(head, channels, hidden=8, feature_layer=layer).eval()
    with torch.no_grad():
        mask = module(features, image)
        assert mask.shape == (2, 1, 64, 64)
        assert torch.equal(module({**features, default: torch.rand_like(features[default])}, image), mask)
        assert not torch.allclose(module({**features, layer: torch.rand_like(features[layer])}, image), mask)
    with pytest.raises(ValueError, match="decoder reads every layer"):
        build_head("casme", channels, feature_layer="layer3")


def test_perception_branch_is_plain_gap_linear_when_attention_is_zero():
    from casm.models.lficam import LFICAMClassifier

    model = LFICAMClassifier("resnet18", 5, width=4, fin_width=4)
    features = torch.relu(torch.randn(2, 32, 2, 2))
    plain = model.fc(features.mean(dim=(2, 3)))
    assert torch.allclose(model.perceive(features, torch.zeros(2, 1, 2, 2)), plain, atol=1e-6)
    assert not torch.allclose(model.perceive(features, torch.ones(2, 1, 2, 2)), plain)
