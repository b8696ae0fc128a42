"""Models: shapes, torchvision compatibility, weight loading, the shared encoder's detachment."""

import pytest
import torch
import torchvision

from casm.models import HEADS, Masker, ResNetClassifier, ResNetTrunk, build_head
from casm.models.head_registry import SIGMOID_HEADS
from casm.models.modes import evaluation_mode


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_weights_load_and_match(tmp_path, arch):
    reference = getattr(torchvision.models, arch)(num_classes=7).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    model = ResNetClassifier(arch, num_classes=7).eval()
    model.load_weights(tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    logits, feats = model(x)
    assert torch.allclose(logits, reference(x), atol=1e-5)
    assert [f.shape[-1] for f in feats.values()] == [16, 16, 8, 4, 2]


def test_imagenet_head_into_fewer_classes_keeps_trunk(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "w.pth")
    model = ResNetClassifier("resnet18", num_classes=10)
    model.load_weights(tmp_path / "w.pth")
    assert model.fc.out_features == 10


def test_wrong_architecture_file_is_a_clear_error(tmp_path):
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="model.arch"):
        ResNetClassifier("resnet18", 10).load_weights(tmp_path / "r50.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.pth"):
        ResNetClassifier("resnet18", 10).load_weights(tmp_path / "junk.pth")


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("size", [32, 48, 64])
def test_heads_give_masks_in_unit_range_at_input_size(head, size):
    classifier = ResNetClassifier("resnet18", 5, width=4)
    masker = Masker(build_head(head, classifier.trunk.channels, hidden=8))
    x = torch.randn(2, 3, size, size)
    mask = masker(x, classifier(x)[1])
    assert mask.shape == (2, 1, size, size)
    assert mask.min() >= 0 and mask.max() <= 1


@pytest.mark.parametrize("head", SIGMOID_HEADS)
def test_sigmoid_heads_expose_the_logits_of_their_mask(head):
    classifier = ResNetClassifier("resnet18", 5, width=4)
    masker = Masker(build_head(head, classifier.trunk.channels, hidden=8))
    x = torch.randn(2, 3, 40, 40)
    features = classifier(x)[1]
    mask, logits = masker.mask_and_logits(x, features)
    assert torch.equal(mask, masker(x, features))  # the training path and the plain one give the same mask
    # every mask value lies between the sigmoids of the extreme logits (nearest or bilinear resizing):
    # logits kept within ±b keep the mask within [sigmoid(-b), sigmoid(b)]
    for i in range(2):
        assert torch.sigmoid(logits[i].min()) - 1e-6 <= mask[i].min()
        assert mask[i].max() <= torch.sigmoid(logits[i].max()) + 1e-6


def test_a_head_without_logits_says_so():
    classifier = ResNetClassifier("resnet18", 5, width=4)
    masker = Masker(build_head("lfi", classifier.trunk.channels, hidden=8))
    with pytest.raises(TypeError, match="no logits"):
        x = torch.randn(2, 3, 32, 32)
        masker.mask_and_logits(x, classifier(x)[1])


def test_casme_decoder_layout_has_320_channels_at_width_64():
    head = build_head("casme", ResNetTrunk("resnet18").channels, hidden=64)
    assert head.out.in_channels == 320


def test_shared_masker_gradient_never_reaches_the_classifier():
    classifier = ResNetClassifier("resnet18", 5, width=4)
    masker = Masker(build_head("casme", classifier.trunk.channels, hidden=8))
    x = torch.randn(2, 3, 32, 32)
    masker(x, classifier(x)[1]).sum().backward()
    assert all(p.grad is None for p in classifier.parameters())
    assert all(p.grad is not None for p in masker.parameters())


def test_standalone_masker_copies_the_encoder():
    classifier = ResNetClassifier("resnet18", 5, width=4).eval()
    masker = Masker(build_head("deconv", classifier.trunk.channels, hidden=8)).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = masker(x, classifier(x)[1])
    alone = masker.standalone(classifier.trunk)
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(1.0)  # later changes to the classifier do not reach the standalone copy
    assert torch.equal(alone(x), expected)


def test_evaluation_mode_restores_flags_even_on_error():
    model = ResNetClassifier("resnet18", 5, width=4).train()
    model.trunk.layer1.eval()
    with pytest.raises(RuntimeError):
        with evaluation_mode(model):
            assert not model.training
            raise RuntimeError
    assert model.training and not model.trunk.layer1.training and model.trunk.layer2.training
