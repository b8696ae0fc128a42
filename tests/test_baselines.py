"""CAM, Grad-CAM, Grad-CAM++, Score-CAM against independent implementations: the grad-cam package
(pytorch-grad-cam) and torchcam (for CAM, which grad-cam lacks), on random and trained tiny models.

Deliberate differences, none of which changes the numbers beyond float rounding: we upsample the
ReLU'd map bilinearly and min-max it once; grad-cam min-maxes, resizes with OpenCV (the same
half-pixel bilinear rule) and min-maxes again, which is the same map because min-max is affine.
"""

import numpy as np
import pytest
import torch
from torch import nn

from casm.baselines import BASELINES, CAM, GradCAM, GradCAMPlusPlus, LogitsOnly, ScoreCAM
from casm.models import ResNetClassifier

TOLERANCE = 1e-4  # max abs difference of maps in [0, 1]


def _trained(model, steps=30):
    from casm.data.datasets import SyntheticShapes
    from casm.data.transforms import normalize_images

    ds = SyntheticShapes("train", 64, 64)
    x = normalize_images(torch.stack([ds[i]["image"].as_subclass(torch.Tensor) for i in range(64)]))
    y = torch.tensor([ds[i]["label"] for i in range(64)])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", params=["random", "trained"])
def model(request):
    torch.manual_seed(0)
    m = ResNetClassifier("resnet18", num_classes=10, width=8).eval()
    return _trained(m) if request.param == "trained" else m


@pytest.fixture
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _reference(method_name, model, images, targets):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "scorecam": pgc.ScoreCAM}[method_name]
    wrapped = LogitsOnly(model)
    with cls(model=wrapped, target_layers=[wrapped.model.trunk.layer4]) as ref:
        if method_name == "scorecam":
            ref.batch_size = 64
        return ref(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])


@pytest.mark.parametrize("method_name", ["gradcam", "gradcampp", "scorecam"])
def test_matches_grad_cam_package(method_name, model, images):
    targets = model(images)[0].argmax(1)
    expected = _reference(method_name, model, images, targets)
    with BASELINES[method_name](model) as method:
        ours = method(images)
    assert ours.shape == (3, 64, 64)
    assert np.abs(ours.numpy() - expected).max() < TOLERANCE


def test_cam_matches_torchcam(model, images):
    import torch.nn.functional as F
    from torchcam.methods import CAM as TorchCAM

    wrapped = LogitsOnly(model)
    targets = model(images)[0].argmax(1)
    with TorchCAM(wrapped, target_layer="model.trunk.layer4", fc_layer="model.fc") as extractor:
        scores = wrapped(images)
        low_res = extractor(class_idx=targets.tolist(), scores=scores)[0]  # (B, h, w), ReLU + min-max
    up = F.interpolate(low_res[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    expected = (flat - low) / (high - low)
    with CAM(model) as method:
        ours = method(images)
    assert (ours - expected.view_as(ours)).abs().max() < TOLERANCE


def test_gradcam_by_hand_on_a_linear_model():
    """A 1x1-conv 'trunk' whose last stage is the identity: dy^c/dA^k = w^c_k / (h*w), so Grad-CAM
    equals CAM up to a positive factor, and both are known in closed form."""

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer4 = nn.Conv2d(3, 2, 1, bias=False)
            self.fc = nn.Linear(2, 2, bias=False)
            with torch.no_grad():
                self.layer4.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
                self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))

        def forward(self, x):
            return self.fc(self.layer4(x).mean(dim=(2, 3)))

    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x[0, 1] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    model = Tiny()
    # class 0: map = A0 - A1 = [[-3, 2], [3, 4]] -> ReLU [[0, 2], [3, 4]] -> min-max [[0, .5], [.75, 1]]
    expected = torch.tensor([[[0.0, 0.5], [0.75, 1.0]]])
    for method_cls in (GradCAM, CAM):
        with method_cls(model, "layer4") as method:
            assert torch.allclose(method(x, class_idx=0), expected, atol=1e-6)


def test_score_cam_chunk_size_does_not_change_the_map(model, images):
    with ScoreCAM(model, chunk_size=7) as small, ScoreCAM(model, chunk_size=10_000) as large:
        assert torch.allclose(small(images), large(images), atol=1e-6)


@pytest.mark.parametrize("method_cls", [CAM, GradCAM, GradCAMPlusPlus, ScoreCAM])
def test_hooks_released_grads_untouched_and_modes_restored(method_cls, images):
    model = ResNetClassifier("resnet18", 10, width=4).train()
    layer = model.trunk.layer4
    with pytest.raises(RuntimeError, match="boom"):
        with method_cls(model) as method:
            method(images, class_idx=torch.tensor([1, 2, 3]))
            assert len(layer._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_unknown_layer_lists_valid_ones():
    model = ResNetClassifier("resnet18", 10, width=4)
    with pytest.raises(ValueError, match=r"did you mean trunk.layer4.*valid layers include"):
        GradCAM(model, "trunk.layer5")


def test_method_outside_with_block_is_an_error(images):
    method = GradCAM(ResNetClassifier("resnet18", 10, width=4))
    with pytest.raises(RuntimeError, match="context manager"):
        method(images)
