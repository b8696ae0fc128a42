"""A user's own classifier (model.classifier): building it by name, weights by file or torchvision name,
matching the data's classes, training a masker against it, and exporting both as one graph."""

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from casm.config import ConfigError
from casm.errors import UserError
from casm.export import ExportError, export_masker, load_explainer, load_masker
from casm.models.builders import TRUST_ENV
from casm.models.outside import (
    OutsideClassifier,
    build_outside,
    import_builder,
    outside_classifier,
    weights_class_names,
)
from casm.trained_run import read_run
from casm.training.run import train
from tests.outside_models import TupleNet, tiny_cnn, tiny_pyramid

TINY_CNN = ["model.classifier.builder=tests.outside_models.tiny_cnn", "masker.encoder=separate"]


@pytest.fixture(autouse=True)
def _trust_the_test_models(monkeypatch):
    """These runs' networks come from tests.outside_models: read back from their checkpoints, they are
    trusted as a user trusts their own package (the refusal itself: tests/test_builders.py)."""
    monkeypatch.setenv(TRUST_ENV, "tests")
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1


def test_builders_by_function_and_by_classmethod():
    assert import_builder("tests.outside_models.tiny_cnn") is tiny_cnn
    assert isinstance(import_builder("tests.outside_models:TupleNet.build")(num_classes=3), TupleNet)
    with pytest.raises(UserError, match="has no callable 'TupleNet.nope'"):
        import_builder("tests.outside_models:TupleNet.nope")


def test_a_weights_file_loads_and_a_wrong_one_is_one_line(tmp_path):
    source = tiny_cnn(num_classes=4)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = build_outside("tests.outside_models.tiny_cnn", str(tmp_path / "w.pth"), {"num_classes": 4})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    with pytest.raises(UserError, match=r"w.pth does not fit tests.outside_models.tiny_cnn"):
        build_outside("tests.outside_models.tiny_cnn", str(tmp_path / "w.pth"), {"num_classes": 5})


def test_a_weights_name_offline_says_which_file_to_pass(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    expected = rf"could not fetch .*{RESNET18_FILE}.*model.classifier.weights=PATH/{RESNET18_FILE}"
    with pytest.raises(UserError, match=expected):
        build_outside("torchvision.models.resnet18", "IMAGENET1K_V1", {})


def test_a_weights_name_reads_torchvisions_cache_and_carries_class_names(tmp_path, monkeypatch):
    """Nothing is downloaded: the file is put where torchvision keeps what it downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    saved = torchvision.models.resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "hub" / "checkpoints" / RESNET18_FILE)
    model = build_outside("torchvision.models.resnet18", "IMAGENET1K_V1", {})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())

    class Spec:
        builder, weights, classes = "torchvision.models.resnet18", "IMAGENET1K_V1", None

    names = weights_class_names(Spec())
    assert len(names) == 1000 and names[0] == "tench"


@pytest.mark.parametrize("builder, weights, match", [
    ("tests.outside_models.tiny_cnn", "IMAGENET1K_V1", "weights names are torchvision's"),
    ("torchvision.models.resnet18", "IMAGENET1K_V9", "not one of IMAGENET1K_V1"),
])
def test_weights_names_that_cannot_work(builder, weights, match):
    with pytest.raises(UserError, match=match):
        build_outside(builder, weights, {})


class _Spec:
    def __init__(self, classes=None, builder="tests.outside_models.tiny_cnn", kwargs=None):
        self.builder, self.weights, self.classes, self.kwargs = builder, None, classes, kwargs or {"num_classes": 6}


def test_the_datas_classes_are_found_among_the_models_by_name(tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(["f", "e", "d", "c", "b", "a"]))
    wrapped, names = outside_classifier(_Spec(str(tmp_path / "classes.txt")), 3, ["a", "c", "e"], 32)
    assert wrapped.map_labels(torch.tensor([0, 1, 2, 0])).tolist() == [5, 3, 1, 5]
    assert wrapped.num_classes == 6 and names == ["f", "e", "d", "c", "b", "a"]  # scored over all its outputs
    x = torch.randn(2, 3, 32, 32)
    wrapped.eval()
    assert torch.equal(wrapped(x)[0], wrapped.model(x))
    with pytest.raises(UserError, match=r"the data's classes \['z'\] are not among"):
        outside_classifier(_Spec(str(tmp_path / "classes.txt")), 2, ["a", "z"], 32)


def test_a_model_without_class_names_needs_one_output_per_class():
    assert outside_classifier(_Spec(), 6, None, 32)[0].labels.tolist() == list(range(6))
    with pytest.raises(UserError, match="has 6 outputs and the data 10 classes; give model.classifier.classes"):
        outside_classifier(_Spec(), 10, None, 32)


def test_tuple_outputs_are_read_as_logits():
    wrapped, _ = outside_classifier(_Spec(builder="tests.outside_models:TupleNet.build", kwargs={"num_classes": 4}),
                                    4, None, 32)
    assert wrapped(torch.randn(2, 3, 32, 32))[0].shape == (2, 4)


@pytest.mark.parametrize("extra, match", [
    (["masker.encoder=shared"], "set masker.encoder=separate"),
    (["model.pretrained=x.pth"], "model.pretrained applies to casm's own ResNet"),
    (["mode=lficam"], "model.classifier needs mode=casm"),
])
def test_combinations_that_cannot_work_are_refused(tiny_cfg, extra, match):
    with pytest.raises(ConfigError, match=match):
        tiny_cfg(*TINY_CNN, *extra)


def test_a_missing_builder_is_named(tiny_cfg):
    with pytest.raises(ConfigError, match="model.classifier.builder is missing"):
        tiny_cfg("model.classifier.weights=x.pth", "masker.encoder=separate")


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """A masker trained against a frozen outside classifier (thinning F), its weights from a file."""
    from casm.config import load_config
    from tests.conftest import TINY

    folder = tmp_path_factory.mktemp("outside")
    torch.manual_seed(1)
    source = tiny_cnn(num_classes=10)
    torch.save(source.state_dict(), folder / "mine.pth")
    cfg = load_config(None, TINY + TINY_CNN + [f"logging.out_dir={folder / 'runs'}", "trainer.max_epochs=1",
                                              "casm.thinning=F", f"model.classifier.weights={folder / 'mine.pth'}"])
    return train(cfg) / "checkpoints" / "last.ckpt", source


def test_a_frozen_outside_classifier_is_explained_as_it_is(frozen_run):
    """Thinning F: the checkpoint's classifier is exactly the user's model (BatchNorm statistics too)."""
    checkpoint, source = frozen_run
    run = read_run(checkpoint)
    assert isinstance(run.classifier, OutsideClassifier)
    state = run.classifier.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())


def test_a_casm_checkpoint_of_an_outside_classifier_gives_its_weights(frozen_run):
    """model.classifier.weights (and judges) may name the checkpoint of a run whose classifier is the builder."""
    checkpoint, source = frozen_run
    model = build_outside("tests.outside_models.tiny_cnn", str(checkpoint), {"num_classes": 10})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(UserError, match=r"last.ckpt does not fit tests.outside_models.tiny_cnn"):
        build_outside("tests.outside_models.tiny_cnn", str(checkpoint), {"num_classes": 5})


def test_the_sanity_checks_refuse_an_outside_classifier_in_one_line(frozen_run):
    from casm.sanity.report import sanity_report

    with pytest.raises(UserError, match="comes from outside casm"):
        sanity_report(frozen_run[0])


def test_a_run_against_a_named_classifier_trains_and_evaluates_over_its_outputs(tiny_cfg, tmp_path):
    """The model has 12 named outputs in its own order, the data 10 of them: labels are mapped by name, the
    run is scored over all 12, and evaluation finds every data class among them."""
    from casm.cli import evaluate_main
    from casm.data.synthetic import CLASS_NAMES

    names = ["extra_1", *reversed(CLASS_NAMES), "extra_2"]
    (tmp_path / "classes.txt").write_text("\n".join(names))
    cfg = tiny_cfg(*TINY_CNN, "model.classifier.kwargs={num_classes: 12}",
                   f"model.classifier.classes={tmp_path}/classes.txt", "trainer.max_epochs=1")
    checkpoint = train(cfg) / "checkpoints" / "last.ckpt"
    run = read_run(checkpoint)
    assert run.class_names == names and run.classifier.num_classes == 12
    assert [names[i] for i in run.classifier.labels] == list(CLASS_NAMES)
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(checkpoint), f"out_dir={out}", "methods=[casm,gradcam,cam]",
                          "max_images=16", "max_images_slow=4", "road_images=2", "--no-progress"]) == 0
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert results["casm"]["images_seen"] == results["casm"]["images"] == 16
    assert all(np.isfinite(results[m]["le"]) for m in ("casm", "gradcam", "cam"))


def test_a_classifier_agnostic_run_co_trains_the_outside_classifier(tiny_cfg):
    module_cfg = tiny_cfg(*TINY_CNN, "casm.thinning=L", "casm.snapshot_every=1", "casm.pool_size=2")
    run = read_run(train(module_cfg) / "checkpoints" / "last.ckpt")
    torch.manual_seed(0)
    untouched = tiny_cnn(num_classes=10).state_dict()
    assert any(not torch.equal(run.classifier.model.state_dict()[k], v) for k, v in untouched.items())


def test_export_with_the_classifier_gives_logits_and_mask_in_one_pass(frozen_run, tmp_path, monkeypatch):
    import onnxruntime as ort

    checkpoint, _ = frozen_run
    run = read_run(checkpoint)
    out = export_masker(checkpoint, tmp_path / "export", onnx=True, with_classifier=True)
    with monkeypatch.context() as untrusted:
        untrusted.delenv(TRUST_ENV)
        with pytest.raises(ExportError, match=r"built by tests.outside_models.tiny_cnn.*--trust-builder tests"):
            load_explainer(out)
        explainer = load_explainer(out, trusted_builders=["tests"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, masks = explainer.logits_and_masks(x)
        assert torch.allclose(logits, run.classifier(x)[0], atol=1e-6)
        assert torch.allclose(masks, load_masker(out)(x), atol=1e-6)  # the masker-only load reads the same bundle
    got_logits, got_masks = ort.InferenceSession(str(out / "explainer.onnx"),
                                                 providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    assert np.abs(got_logits - logits.numpy()).max() < 1e-4 and np.abs(got_masks - masks.numpy()).max() < 1e-4


def test_a_masker_only_export_has_no_classifier_to_load(frozen_run, tmp_path):
    out = export_masker(frozen_run[0], tmp_path / "export")
    with pytest.raises(ExportError, match="exported without its classifier; .*--with-classifier"):
        load_explainer(out)


def test_casms_own_classifier_exports_sharing_its_trunk_with_the_masker(trained_checkpoint, tmp_path):
    out = export_masker(trained_checkpoint, tmp_path / "export", with_classifier=True)
    manifest = json.loads((out / "masker.json").read_text())
    assert manifest["classifier"]["kind"] == "casm" and manifest["classifier"]["shares_encoder"]
    explainer, masker = load_explainer(out), load_masker(out)
    run = read_run(trained_checkpoint)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, masks = explainer.logits_and_masks(x)
        assert torch.allclose(logits, run.classifier(x)[0], atol=1e-6)
        assert torch.allclose(masks, masker(x), atol=1e-6)  # the trunk runs once, the mask is the masker's


@pytest.mark.parametrize("recipe, match", [
    ({"kind": "casm", "arch": "resnet99", "width": 8, "num_classes": 3}, "unknown architecture 'resnet99'"),
    ({"kind": "casm", "arch": "resnet18", "width": "8"}, "not a classifier recipe"),
    ({"kind": "outside", "builder": "os.system", "kwargs": {"command": "true"}}, "built by os.system"),
])
def test_a_crafted_classifier_recipe_is_refused_in_one_line(recipe, match):
    from casm.export.standalone import build_exported_classifier

    with pytest.raises(ExportError, match=match):
        build_exported_classifier(recipe, "masker.json")


def test_explain_writes_the_predicted_class(trained_checkpoint, tmp_path):
    from PIL import Image

    from casm.cli import main as cli_main

    out = export_masker(trained_checkpoint, tmp_path / "export", with_classifier=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert cli_main(["explain", str(out), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--no-progress",
                     "--device", "cpu"]) == 0
    predicted = json.loads((tmp_path / "o" / "a_box.json").read_text())["predicted"]
    classes = json.loads((out / "masker.json").read_text())["classes"]
    assert predicted["class"] == classes[predicted["index"]] and 0 < predicted["probability"] <= 1
    assert cli_main(["explain", str(out), str(tmp_path / "a.png"), "--out", str(tmp_path / "m"), "--no-progress",
                     "--device", "cpu", "--masks-only"]) == 0
    assert "predicted" not in json.loads((tmp_path / "m" / "a_box.json").read_text())


PYRAMID_LAYERS = "masker.encoder_model.layers={stem: '0', layer1: '1', layer2: '2', layer3: '3', layer4: '4'}"
PYRAMID = ["masker.encoder=separate", "masker.encoder_model.builder=tests.outside_models.tiny_pyramid", PYRAMID_LAYERS]


def test_a_named_encoder_reads_the_modules_it_names():
    from casm.models.feature_encoder import NamedFeatureEncoder

    encoder = NamedFeatureEncoder(tiny_pyramid(), {"stem": "0", "layer4": "4"}, 64)
    assert encoder.channels == {"stem": 8, "layer4": 64}
    features = encoder(torch.randn(2, 3, 64, 64))
    assert features["stem"].shape == (2, 8, 32, 32) and features["layer4"].shape == (2, 64, 2, 2)
    with pytest.raises(UserError, match=r"layers.layer4='44' is not a module of the encoder; did you mean 4"):
        NamedFeatureEncoder(tiny_pyramid(), {"layer4": "44"}, 64)
    with pytest.raises(UserError, match=r"layers.layer4='6' gives Tensor \(1, 64\), not a \(B, C, H, W\) map"):
        NamedFeatureEncoder(tiny_pyramid(), {"layer4": "6"}, 64)


@pytest.mark.parametrize("extra, match", [
    (["masker.encoder_model.layers={stem: '0'}"], "missing layer1, layer2, layer3, layer4"),
    (["masker.head=abn", "masker.encoder_model.layers={layer4: '4'}"], "map layer3 .*missing layer3"),
    (["masker.encoder=shared"], "needs masker.encoder=separate"),
    (["masker.encoder_model.layers={stem: '0', layer1: '1', layer2: '2', layer3: '3', layer4: '4', neck: '5'}"],
     "unknown neck"),
])
def test_an_encoder_that_cannot_feed_the_head_is_refused(tiny_cfg, extra, match):
    base = [o for o in PYRAMID if o != PYRAMID_LAYERS]
    if not any(o.startswith("masker.encoder_model.layers") for o in extra):
        base.append(PYRAMID_LAYERS)
    with pytest.raises(ConfigError, match=match):
        tiny_cfg(*base, *extra)


def test_a_masker_on_a_named_encoder_trains_and_exports(tiny_cfg, tmp_path, monkeypatch):
    import onnxruntime as ort

    checkpoint = train(tiny_cfg(*PYRAMID, "trainer.max_epochs=1", "masker.head=deconv")) / "checkpoints" / "last.ckpt"
    run = read_run(checkpoint)
    out = export_masker(checkpoint, tmp_path / "export", onnx=True)
    monkeypatch.delenv(TRUST_ENV)
    with pytest.raises(ExportError, match=r"masker.json: encoder: built by tests.outside_models.tiny_pyramid"):
        load_masker(out)
    masker = load_masker(out, trusted_builders=("tests",))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = run.masker(x)
        assert torch.allclose(masker(x), expected, atol=1e-6)
    got = ort.InferenceSession(str(out / "masker.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    assert np.abs(got - expected.numpy()).max() < 1e-4
