"""A builder name is code: the walk rule (every name) and the allow-list (names read from files), on crafted
exports and checkpoints whose payload would create a marker file if it ever ran (docs/export.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from casm.cli import main as cli_main
from casm.errors import UserError
from casm.export import ExportError, export_masker, load_explainer, load_masker
from casm.export.standalone import MANIFEST_FILE, manifest_digest
from casm.models.builders import TRUST_ENV, import_builder, trusted_modules
from casm.trained_run import read_run
from tests.outside_models import TupleNet, tiny_cnn


@pytest.mark.parametrize("spec", [
    "torchvision.models:resnet.torch.os.system",  # walks out of the trusted module through an imported module
    "torchvision.models:resnet.ResNet.load_state_dict",  # a method inherited from torch, not a builder
    "torchvision.models.resnet:Weights",  # a class imported from elsewhere, and not a model
    "torchvision.models:resnet.ResNet.__init__.__globals__",  # private attributes are never walked
    "os.system", "builtins:eval", "builtins:exec",  # builtins are not functions defined in their module
])
def test_the_walk_refuses_anything_but_a_builder_defined_in_the_named_module(spec):
    with pytest.raises(UserError, match="refused|private attribute"):
        import_builder(spec)


@pytest.mark.parametrize("spec, expected", [
    ("torchvision.models.resnet18", "resnet18"),
    ("torchvision.models:resnet.resnet18", "resnet18"),  # through a submodule
    ("torchvision.models:ResNet", "ResNet"),  # a model class
    ("tests.outside_models:TupleNet.build", "build"),  # a classmethod of a model class
    ("tests.outside_models.tiny_cnn", "tiny_cnn"),
])
def test_real_builders_resolve(spec, expected):
    assert import_builder(spec).__name__ == expected


def test_a_file_may_name_only_trusted_modules_checked_before_import(monkeypatch):
    with pytest.raises(UserError, match=r"built by tests.outside_models.tiny_cnn.*--trust-builder tests"):
        import_builder("tests.outside_models.tiny_cnn", trusted=trusted_modules())
    assert import_builder("tests.outside_models.tiny_cnn", trusted=trusted_modules(["tests"])) is tiny_cnn
    monkeypatch.setenv(TRUST_ENV, "somewhere, tests")
    assert trusted_modules() == ("torchvision.models", "somewhere", "tests")
    assert import_builder("tests.outside_models:TupleNet.build", trusted=trusted_modules()).__self__ is TupleNet
    # the module is not imported at all when untrusted: importing runs its top-level code
    with pytest.raises(UserError, match="built by antigravity.x"):
        import_builder("antigravity.x", trusted=trusted_modules())


def _forge(export: Path, builder: str, kwargs: dict, part: str = "classifier") -> None:
    """What anyone who can write an export folder can do: edit the manifest and recompute its checksum."""
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    recipe = {"kind": "outside", "builder": builder, "kwargs": kwargs, "num_classes": 10, "data_classes": 10,
              "shares_encoder": False}
    manifest[part] = recipe if part == "classifier" else {"builder": builder, "kwargs": kwargs, "layers": {}}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (export / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize("part", ["classifier", "encoder"])
@pytest.mark.parametrize("builder", ["torchvision.models:resnet.torch.os.system", "os.system", "subprocess.run"])
def test_a_crafted_export_runs_no_code_anywhere(trained_checkpoint, tmp_path, builder, part):
    marker = tmp_path / "MARKER"
    export = export_masker(trained_checkpoint, tmp_path / "export", with_classifier=True)
    _forge(export, builder, {"command": f"touch {marker}"}, part)
    loads = [lambda: load_explainer(export), lambda: load_explainer(export, trusted_builders=["torchvision", "os"])]
    if part == "encoder":
        loads.append(lambda: load_masker(export))
    else:  # a masker-only load never rebuilds the classifier
        load_masker(export)
    for load in loads:
        with pytest.raises(ExportError, match="is refused|: built by"):
            load()
    image = tmp_path / "a.png"
    import cv2
    cv2.imwrite(str(image), (torch.rand(20, 20, 3) * 255).byte().numpy())
    assert cli_main(["explain", str(export), str(image), "--out", str(tmp_path / "o"), "--no-progress",
                     "--device", "cpu", "--trust-builder", "torchvision"]) == 2
    assert not marker.exists()


def test_a_crafted_checkpoint_runs_no_code(trained_checkpoint, tmp_path, capsys):
    """The same payload in a checkpoint's saved config (model.classifier.builder): evaluate, export and sanity
    refuse it before any call, even with the allowed module trusted by hand."""
    marker = tmp_path / "MARKER"
    ckpt = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["model"]["classifier"] = {
        "builder": "torchvision.models:resnet.torch.os.system", "kwargs": {"command": f"touch {marker}"},
        "weights": None, "classes": None}
    crafted = tmp_path / "run" / "checkpoints" / "last.ckpt"
    crafted.parent.mkdir(parents=True)
    torch.save(ckpt, crafted)
    with pytest.raises(UserError, match="is refused"):
        read_run(crafted)
    assert cli_main(["export", str(crafted), str(tmp_path / "e")]) == 2
    assert cli_main(["evaluate", "--checkpoint", str(crafted), "--no-progress", "--trust-builder", "torchvision"]) == 2
    assert cli_main(["sanity", "--checkpoint", str(crafted), "--device", "cpu"]) == 2
    assert "is refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "e").exists()
    ckpt["hyper_parameters"]["config"]["model"]["classifier"]["builder"] = "tests.outside_models.tiny_cnn"
    torch.save(ckpt, crafted)
    with pytest.raises(UserError, match=r"last.ckpt: model.classifier: built by tests.outside_models"):
        read_run(crafted)
