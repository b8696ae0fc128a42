"""Cascading model-parameter randomization (Adebayo et al.; docs/sanity.md) on tiny models."""

from __future__ import annotations

import pytest
import torch

from casm.baselines import BASELINES
from casm.models import Masker, ResNetClassifier, build_head
from casm.sanity.randomization import (
    cascade,
    cascade_similarities,
    chance_similarity,
    classifier_stages,
    masker_stages,
    similarity,
)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return ResNetClassifier("resnet18", 10, width=8).eval()


def _changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    return any(not torch.equal(before[k], after[k]) for k in keys)


def test_the_classifier_cascade_changes_exactly_the_stages_it_names(classifier):
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    prefixes = {"fc": "fc.", "layer4": "trunk.layer4.", "layer3": "trunk.layer3.", "layer2": "trunk.layer2.",
                "layer1": "trunk.layer1.", "stem": "trunk.conv1."}
    done = []
    for name, model in cascade(classifier, classifier_stages):
        done.append(name)
        state = model.state_dict()
        for stage, prefix in prefixes.items():
            assert _changed(before, state, prefix) == (stage in done), (name, stage)
    assert done == list(prefixes)
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in before.items())  # the original is untouched


def test_the_masker_cascade_goes_from_the_head_down_into_its_encoder(classifier):
    masker = Masker(build_head("casme", classifier.trunk.channels, 8)).standalone(classifier.trunk)
    names = [name for name, _ in masker_stages(masker)]
    assert names[0] == "head.out" and names[1:5] == [f"head.reduce.layer{i}" for i in (4, 3, 2, 1)]
    assert names[-5:] == ["encoder.layer4", "encoder.layer3", "encoder.layer2", "encoder.layer1", "encoder.stem"]
    before = {k: v.clone() for k, v in masker.state_dict().items()}
    for name, model in cascade(masker, masker_stages):
        if name == "head.reduce.layer4":
            state = model.state_dict()
            assert _changed(before, state, "head.out.") and _changed(before, state, "head.reduce.layer4.")
            assert not _changed(before, state, "head.reduce.layer3.") and not _changed(before, state, "encoder.")


def test_similarity_by_known_answers():
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    same = similarity(maps, maps)
    assert same["spearman"] == pytest.approx(1.0, abs=1e-4) and same["ssim"] == pytest.approx(1.0, abs=1e-4)
    flipped = similarity(maps, 1 - maps)  # ranks reversed
    assert flipped["spearman"] == pytest.approx(-1.0, abs=1e-4)


def test_chance_similarity_compares_each_map_with_the_next_images():
    ramp = torch.arange(256.0).view(1, 16, 16) / 255  # no ties
    maps = torch.cat([ramp, 1 - ramp])  # two images whose maps rank the pixels in opposite orders
    assert chance_similarity(maps)["spearman"] == pytest.approx(-1.0, abs=1e-4)
    assert chance_similarity(torch.cat([ramp, ramp]))["spearman"] == pytest.approx(1.0, abs=1e-4)


def test_grad_cam_maps_decorrelate_as_the_cascade_goes_down(classifier):
    images = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(2))

    def grad_cam(model, x):
        with BASELINES["gradcam"](model, "trunk.layer4") as explain:
            return explain(x)

    rows = cascade_similarities(classifier, classifier_stages, grad_cam, images)
    assert [r["stage"] for r in rows] == ["fc", "layer4", "layer3", "layer2", "layer1", "stem"]
    assert rows[-1]["spearman"] < 0.9  # all weights random: the maps are not the trained model's
