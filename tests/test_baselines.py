"""Every baseline against an independent implementation: the grad-cam package (pytorch-grad-cam) for the
CAM family, torchcam for CAM (which grad-cam lacks), a direct loop for RISE and closed forms where one
exists; on random and trained tiny models and on torchvision's ResNet-18, which no test trained.

Deliberate differences, none of which changes the numbers beyond float rounding: we upsample the
ReLU'd map bilinearly and min-max it once; grad-cam min-maxes, resizes with OpenCV (the same
half-pixel bilinear rule) and min-maxes again, which is the same map because min-max is affine.
"""

import numpy as np
import pytest
import torch
from torch import nn

from casm.baselines import (
    BASELINES,
    CAM,
    RISE,
    AblationCAM,
    EigenCAM,
    GradCAM,
    HiResCAM,
    LayerCAM,
    LogitsOnly,
    ScoreCAM,
    XGradCAM,
)
from casm.baselines.perturbation import rise_masks
from casm.errors import UserError
from casm.models import ResNetClassifier

TOLERANCE = 1e-5  # max abs difference of maps in [0, 1]


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


GRAD_CAM_PACKAGE = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "scorecam": "ScoreCAM",
                    "xgradcam": "XGradCAM", "hirescam": "HiResCAM", "layercam": "LayerCAM",
                    "ablationcam": "AblationCAM", "shapleycam": "ShapleyCAM", "eigencam": "EigenCAM"}


def _reference(method_name, model, images, targets, layer="model.trunk.layer4"):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

    target_cls = ClassifierOutputReST if method_name == "shapleycam" else ClassifierOutputTarget  # the paper's score
    wrapped = LogitsOnly(model)
    target_layer = dict(wrapped.named_modules())[layer]
    with getattr(pgc, GRAD_CAM_PACKAGE[method_name])(model=wrapped, target_layers=[target_layer]) as ref:
        ref.batch_size = 64  # Score-CAM's and Ablation-CAM's passes per step (the maps do not depend on it)
        return ref(input_tensor=images, targets=[target_cls(int(t)) for t in targets])


def _torchvision_resnet18():
    from torchvision.models import resnet18

    torch.manual_seed(3)
    return resnet18(num_classes=10).eval()


@pytest.mark.parametrize("method_name", ["gradcam", "gradcampp", "scorecam", "xgradcam", "hirescam", "layercam",
                                         "ablationcam", "shapleycam"])
def test_matches_grad_cam_package(method_name, model, images):
    targets = model(images)[0].argmax(1)
    expected = _reference(method_name, model, images, targets)
    with BASELINES[method_name](model) as method:
        ours = method(images)
    assert ours.shape == (3, 64, 64)
    assert np.abs(ours.numpy() - expected).max() < TOLERANCE


@pytest.mark.parametrize("method_name", ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "shapleycam"])
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_matches_grad_cam_package_on_a_torchvision_model(method_name, layer, images):
    model = _torchvision_resnet18()
    targets = model(images).argmax(1)
    expected = _reference(method_name, model, images, targets, layer=f"model.{layer}")
    with BASELINES[method_name](model, layer) as method:
        ours = method(images)
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
    for method_cls in (GradCAM, CAM, HiResCAM):  # HiResCAM: the gradient is flat after a GAP
        with method_cls(model, "layer4") as method:
            assert torch.allclose(method(x, class_idx=0), expected, atol=1e-6)


@pytest.mark.parametrize("method_cls", [ScoreCAM, AblationCAM, RISE])
def test_chunk_size_does_not_change_the_map(method_cls, model, images):
    kwargs = {"num_masks": 50} if method_cls is RISE else {}
    with method_cls(model, chunk_size=7, **kwargs) as small, method_cls(model, chunk_size=10_000, **kwargs) as large:
        assert torch.allclose(small(images), large(images), atol=1e-5)


class _EqualMasks(nn.Module):
    """A network whose target layer repeats each of 4 ReLU'd conv channels at 2x and 4x (exact in floating
    point) and adds 3 channels active at one position only, with different values, and 2 all-zero ones:
    per image at most 4 + 1 distinct non-constant Score-CAM masks among its 17 channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=8, padding=1)
        self.layer4 = nn.Identity()
        self.fc = nn.Linear(17, 5)

    def forward(self, x):
        a = torch.relu(self.conv(x)) + 0.01  # no channel constant by chance
        spot = torch.zeros_like(a[:, :1])
        spot[:, :, 2, 5] = 1.0
        b, _, h, w = a.shape
        features = self.layer4(torch.cat([a, 2 * a, 4 * a, spot, 3 * spot, 0.25 * spot, torch.zeros(b, 2, h, w)], 1))
        return self.fc(features.mean(dim=(2, 3)))


def test_scorecam_runs_one_pass_per_distinct_mask_and_still_equals_grad_cam():
    torch.manual_seed(0)
    model = _EqualMasks().eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = model(images).argmax(1)
    expected = _reference("scorecam", model, images, targets, layer="model.layer4")
    forwarded = []
    hook = model.conv.register_forward_hook(lambda module, inputs, output: forwarded.append(len(output)))
    with ScoreCAM(model, "layer4") as method:
        ours = method(images)
    hook.remove()
    assert np.abs(ours.numpy() - expected).max() < TOLERANCE
    assert sum(forwarded) == 3 + 1 + 3 * 5  # the batch, the all-zero image, 5 distinct masks per image (not 17)


def test_layercam_and_xgradcam_by_hand():
    """Score ``sum_ij (A^0_ij - A^1_ij)^2 / 2`` on an identity 'layer4': ``g^0 = A^0 - A^1 = -g^1``."""

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer4 = nn.Identity()

        def forward(self, x):
            a = self.layer4(x)
            score = 0.5 * ((a[:, 0] - a[:, 1]) ** 2).sum(dim=(1, 2))
            return torch.stack([score, -score], dim=1)

    a0, a1 = torch.tensor([[3.0, 1.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    g0 = a0 - a1  # [[2, 0], [-2, 2]]
    layer_map = torch.relu(g0) * a0 + torch.relu(-g0) * a1  # LayerCAM: [[6, 0], [4, 4]]
    weights = ((g0 * a0).sum() / a0.sum(), (-g0 * a1).sum() / a1.sum())  # XGrad-CAM: 10/6 and 2/4
    x_map = torch.relu(weights[0] * a0 + weights[1] * a1)
    for method_cls, raw in ((LayerCAM, layer_map), (XGradCAM, x_map)):
        expected = ((raw - raw.min()) / (raw.max() - raw.min()))[None]
        with method_cls(Quadratic(), "layer4") as method:
            assert torch.allclose(method(torch.stack([a0, a1])[None], class_idx=0), expected, atol=1e-6)


class _FixedActivation(nn.Module):
    """A 'model' whose layer4 output is a given activation whatever the input (EigenCAM's test)."""

    def __init__(self, activation):
        super().__init__()
        self.layer4 = nn.Identity()
        self.activation = activation

    def forward(self, x):
        return self.layer4(self.activation).mean(dim=(2, 3))


def test_eigencam_projects_on_the_first_principal_component():
    """A rank-one activation ``A^k_ij = u_k v_ij``, centred over the positions, is ``u (v - mean v)``: its first
    principal direction is u, so the map is ReLU(v - mean v), with the sign that rises with ``sum_k A^k``."""
    u = torch.tensor([1.0, 2.0, 0.5])
    v = torch.tensor([[0.0, 1.0], [4.0, 3.0]])
    with EigenCAM(_FixedActivation(u[None, :, None, None] * v[None, None]), "layer4") as method:
        ours = method(torch.zeros(1, 3, 2, 2))
    centred = (v - v.mean()).clamp(min=0)
    assert torch.allclose(ours[0], centred / centred.max(), atol=1e-5)


def test_eigencam_matches_grad_cam_package_where_its_svd_picks_our_sign(model, images):
    """The package keeps the sign LAPACK returns; where it is ours the maps must agree."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    expected = _reference("eigencam", model, images, model(images)[0].argmax(1))
    activation = model(images)[1]["layer4"].detach()
    with EigenCAM(model) as method:
        ours = method(images)
    projection = method.saliency(activation, None, None, images)
    theirs = get_2d_projection(activation.numpy())
    agree = (theirs * projection.numpy()).sum(axis=(1, 2)) > 0
    assert agree.any()
    assert np.abs(ours.numpy()[agree] - expected[agree]).max() < TOLERANCE
    assert np.allclose(np.abs(theirs), np.abs(projection.numpy()), atol=1e-3)  # the same component either way


def test_integrated_gradients_on_a_linear_model_is_input_times_weight():
    """For logits = W x (no bias), IG from a zero baseline is exactly x * W[c] (the path gradient is constant)."""
    from casm.baselines import IntegratedGradients

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))

        def forward(self, x):
            return torch.einsum("kchw,bchw->bk", self.weight, x)

    model = Linear()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with IntegratedGradients(model, steps=8, normalize=False) as method:
        ours = method(x, class_idx=torch.tensor([0, 1]))
    expected = torch.relu(torch.stack([(x[0] * model.weight[0]).sum(0), (x[1] * model.weight[1]).sum(0)]))
    assert torch.allclose(ours, expected, atol=1e-5)


def test_rise_equals_a_direct_loop_over_its_masks():
    torch.manual_seed(0)
    model = ResNetClassifier("resnet18", 10, width=4).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    masks = rise_masks(40, (32, 32), grid=4, keep=0.3, seed=7)
    with torch.no_grad():
        target = model(x)[0].argmax(1)
        expected = torch.zeros(2, 32, 32)
        for m in masks:
            probs = model(x * m)[0].softmax(1)
            expected += probs[torch.arange(2), target][:, None, None] * m
    expected /= 40 * 0.3
    with RISE(model, num_masks=40, grid=4, keep=0.3, seed=7, chunk_size=6, normalize=False) as method:
        assert torch.allclose(method(x), expected, atol=1e-5)


def test_rise_masks_are_seeded_smooth_and_keep_the_asked_share():
    a, b = rise_masks(500, (48, 40), grid=6, keep=0.3, seed=1), rise_masks(500, (48, 40), grid=6, keep=0.3, seed=1)
    assert a.shape == (500, 48, 40) and torch.equal(a, b)
    assert not torch.equal(a, rise_masks(500, (48, 40), grid=6, keep=0.3, seed=2))
    assert 0 <= a.min() and a.max() <= 1 and abs(a.mean().item() - 0.3) < 0.03
    assert ((a > 0.01) & (a < 0.99)).float().mean() > 0.2  # bilinear upsampling: soft edges, not a hard grid


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_hooks_released_grads_untouched_and_modes_restored(name, images):
    model = ResNetClassifier("resnet18", 10, width=4).train()
    layer = model.trunk.layer4
    kwargs = {"num_masks": 8} if name == "rise" else {"steps": 4} if name == "integrated_gradients" else {}
    with pytest.raises(RuntimeError, match="boom"):
        with BASELINES[name](model, **kwargs) as method:
            method(images, class_idx=torch.tensor([1, 2, 3]))
            assert len(layer._forward_hooks) == (0 if name in ("rise", "integrated_gradients") else 1)
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


class _TwoReLUs(nn.Module):
    """Calls one ReLU module twice (as EfficientNet calls its activation module in stem and head), or, with
    ``separate``, two ReLU modules with the same effect."""

    def __init__(self, separate: bool = False) -> None:
        super().__init__()
        self.stem, self.head, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        self.head_act = nn.ReLU() if separate else self.act
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.head_act(self.head(self.act(self.stem(x)))).mean(dim=(2, 3)))


def test_a_layer_called_twice_gives_its_last_call_and_ablation_cam_refuses_it(images):
    torch.manual_seed(0)
    shared = _TwoReLUs().eval()
    separate = _TwoReLUs(separate=True).eval()
    separate.load_state_dict(shared.state_dict())
    with GradCAM(shared, "act") as last_call, GradCAM(separate, "head_act") as head:
        assert torch.allclose(last_call(images), head(images), atol=1e-6)
    with BASELINES["ablationcam"](shared, "act") as method, pytest.raises(UserError, match="calls 'act' 2 times"):
        method(images)
    with BASELINES["ablationcam"](separate, "head_act") as method:
        assert method(images).shape == (3, 64, 64)
