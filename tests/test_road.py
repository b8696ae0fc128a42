"""ROAD against the grad-cam package's implementation (SciPy's sparse solver, image by image), and the GPU's
conjugate-gradient fill against the CPU's direct one."""

import numpy as np
import pytest
import torch

from casm.metrics.road import (
    PERCENTILES,
    conjugate_gradient_fill,
    linear_imputation,
    noisy_imputation,
    percentile_removal,
    road_scores,
)
from casm.models import ResNetClassifier
from casm.models.outputs import LogitsOnly


@pytest.fixture
def images():
    return torch.randn(3, 3, 24, 20, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def maps():
    m = torch.rand(3, 24, 20, generator=torch.Generator().manual_seed(1))
    m[:, :4] = 0  # ties, as after a ReLU
    return m


@pytest.mark.parametrize("percentile", [10, 50, 90])
def test_imputation_solves_the_same_system_as_grad_cam(images, maps, percentile):
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    removed = percentile_removal(maps, percentile, most_relevant=True)
    ours = linear_imputation(images, removed)
    for i in range(len(images)):
        theirs = NoisyLinearImputer(noise=0.0)(images[i], (~removed[i]).float())
        assert (ours[i] - theirs).abs().max() < 1e-6  # the same direct solve, in float64 then float32
    assert torch.equal(ours[~removed[:, None].expand_as(ours)], images[~removed[:, None].expand_as(images)])


@pytest.mark.parametrize("percentile", [10, 50, 90])
def test_the_gpus_iterative_fill_agrees_with_the_direct_one(images, maps, percentile):
    """conjugate_gradient_fill is what a GPU runs; here on the CPU against direct_fill."""
    removed = percentile_removal(maps, percentile, most_relevant=True)
    assert (conjugate_gradient_fill(images, removed) - linear_imputation(images, removed)).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fill_leaves_its_input_alone(images, maps, dtype):
    """The direct fill writes into a float64 copy: a float64 image must not be that copy."""
    images = images.to(dtype)
    before = images.clone()
    filled = linear_imputation(images, percentile_removal(maps, 50, most_relevant=True))
    assert torch.equal(images, before) and filled.dtype == dtype and not torch.equal(filled, images)


@pytest.mark.parametrize("fill", [linear_imputation, conjugate_gradient_fill])
def test_nothing_or_everything_removed(images, fill):
    """A constant map (a collapsed mask) removes every pixel at every level: no known neighbour is left, so
    both fills give 0, the dataset mean in normalized units, instead of a singular system's NaNs."""
    none, every = torch.zeros(3, 24, 20, dtype=torch.bool), torch.ones(3, 24, 20, dtype=torch.bool)
    assert torch.equal(fill(images, none), images)
    assert torch.equal(fill(images, every), torch.zeros_like(images))


def test_a_filled_pixel_is_the_weighted_mean_of_its_neighbours():
    image = torch.arange(25.0).view(1, 1, 5, 5)  # a linear ramp is its own harmonic fill
    removed = torch.zeros(1, 5, 5, dtype=torch.bool)
    removed[0, 1:4, 1:4] = True
    assert torch.allclose(linear_imputation(image, removed), image, atol=1e-5)


@pytest.mark.parametrize("most_relevant", [True, False])
def test_removal_and_scores_match_grad_cam(images, maps, most_relevant):
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.manual_seed(0)
    model = ResNetClassifier("resnet18", 5, width=4).eval()
    targets = model(images)[0].argmax(1)
    remover = RemoveMostRelevantFirst if most_relevant else RemoveLeastRelevantFirst
    expected = np.mean([PerturbationConfidenceMetric(remover(p, NoisyLinearImputer(noise=0.0)))(
        images, maps.numpy(), [ClassifierOutputSoftmaxTarget(int(t)) for t in targets], LogitsOnly(model),
        return_diff=False) for p in PERCENTILES], axis=0)
    ours = road_scores(model, images, maps, targets, noise=0.0)
    key = "road_morf" if most_relevant else "road_lerf"
    assert np.abs(ours[key].numpy() - expected).max() < 1e-4


def test_noise_is_seeded_and_only_on_filled_pixels(images, maps):
    removed = percentile_removal(maps, 50, most_relevant=True)
    keys = torch.tensor([3, 4, 5])
    a = noisy_imputation(images, removed, keys, 0.01)
    b = noisy_imputation(images, removed, keys, 0.01)
    clean = linear_imputation(images, removed)
    assert torch.equal(a, b)
    difference = (a - clean).abs()
    assert difference[~removed[:, None].expand_as(a)].max() == 0
    assert 0.005 < difference[removed[:, None].expand_as(a)].std() < 0.02


def test_an_images_score_does_not_depend_on_its_batch(images, maps):
    torch.manual_seed(0)
    model = ResNetClassifier("resnet18", 5, width=4).eval()
    targets = model(images)[0].argmax(1)
    whole = road_scores(model, images, maps, targets, keys=torch.tensor([7, 8, 9]))
    alone = road_scores(model, images[1:2], maps[1:2], targets[1:2], keys=torch.tensor([8]))
    for key in ("road", "road_morf", "road_lerf"):
        assert whole[key][1] == pytest.approx(float(alone[key][0]), abs=1e-6)
    other_noise = road_scores(model, images[1:2], maps[1:2], targets[1:2], keys=torch.tensor([9]))
    assert other_noise["road_morf"] != alone["road_morf"]  # the noise is drawn, not absent
