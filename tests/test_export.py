"""Export -> load -> identical masks; explain new images; bad exports and images fail cleanly."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import casm
from casm.checkpoints import read_checkpoint
from casm.cli import main as cli_main
from casm.export import ExportError, explain, export_masker, load_masker, masker_from_checkpoint
from casm.training.module import CASMModule


def _training_masks(ckpt, x):
    state = read_checkpoint(ckpt)
    module = CASMModule(state["hyper_parameters"]["config"], state["hyper_parameters"]["num_classes"])
    module.load_state_dict(state["state_dict"])
    module.eval()
    with torch.no_grad():
        return module.masker(x, module.classifier(x)[1])


def test_round_trip_is_exact(trained_checkpoint, tmp_path):
    out = export_masker(trained_checkpoint, tmp_path / "export")
    masker = casm.load_masker(out)
    manifest = json.loads((out / "masker.json").read_text())
    assert manifest["head"] == "deconv" and manifest["image_size"] == 32 and len(manifest["classes"]) == 10
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(masker(x), _training_masks(trained_checkpoint, x))


def test_onnx_export_matches_pytorch(trained_checkpoint, tmp_path):
    import onnxruntime as ort

    out = export_masker(trained_checkpoint, tmp_path / "export", onnx=True)
    session = ort.InferenceSession(str(out / "masker.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)  # another batch size than the one exported with
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - load_masker(out)(x).numpy()).max() < 1e-4


def test_explain_takes_paths_pil_and_arrays_of_any_mode(trained_checkpoint, tmp_path):
    masker = masker_from_checkpoint(trained_checkpoint)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    inputs = [tmp_path / "a.png", Image.fromarray(rgb).convert("L"), np.dstack([rgb, rgb[..., :1]]), rgb[..., 0]]
    results = explain(masker, inputs, batch_size=3)
    assert [r.mask.shape for r in results] == [(40, 50)] * 4
    assert all(0 <= r.mask.min() and r.mask.max() <= 1 for r in results)
    x0, y0, x1, y1 = results[0].box
    assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 40


def test_cli_export_and_explain(trained_checkpoint, tmp_path, capsys):
    assert cli_main(["export", str(trained_checkpoint), str(tmp_path / "m")]) == 0
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(images / "ok.png")
    Image.fromarray(np.zeros((20, 24, 4), np.uint8)).save(images / "rgba.png")
    (images / "broken.jpg").write_bytes(b"nope")
    Image.new("1", (3000, 2000)).save(images / "huge.png")  # 6 MP, above the limit given below
    code = cli_main(["explain", str(tmp_path / "m"), str(images), "--out", str(tmp_path / "o"), "--format", "png16",
                     "--no-progress", "--max-megapixels", "5"])
    err = capsys.readouterr().err
    assert code == 1 and "broken.jpg" in err  # reported and skipped, the others written
    assert "skip_corrupt" not in err  # a training key means nothing to explain
    assert "huge.png" in err and "--max-megapixels raises the limit" in err
    mask = np.asarray(Image.open(tmp_path / "o" / "ok_mask.png"))
    assert mask.dtype == np.uint16 and mask.shape == (30, 30)
    assert (tmp_path / "o" / "rgba_overlay.png").is_file()
    assert json.loads((tmp_path / "o" / "rgba_box.json").read_text())["width"] == 24


def test_not_an_export_and_tampered_weights(trained_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="not a casm masker export"):
        load_masker(tmp_path)
    out = export_masker(trained_checkpoint, tmp_path / "export")
    weights = out / "masker.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="SHA-256"):
        load_masker(out)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    _reseal(out, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())  # checksums that agree
    with pytest.raises(ExportError, match="cannot be read"):  # the truncated file itself must fail
        load_masker(out)


def _reseal(out, **changes):
    """Change manifest fields and recompute its own checksum, as a careful forger would."""
    from casm.export.standalone import manifest_digest

    manifest = dict(json.loads((out / "masker.json").read_text()), **changes)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / "masker.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory):
    return export_masker(trained_checkpoint, tmp_path_factory.mktemp("export") / "masker")


@pytest.mark.parametrize("changes,message", [
    ({"image_size": 0}, "image_size=0 must be an integer"), ({"image_size": -5}, "image_size=-5"),
    ({"image_size": "abc"}, "image_size='abc'"), ({"image_size": 60000}, "image_size=60000"),
    ({"std": [0, 0, 0]}, "std=.* must be positive"), ({"mean": [0.5, 0.5]}, "mean=.* three finite numbers"),
    ({"format_version": 9}, "format_version 9"), ({"weights_sha256": ""}, "weights_sha256 is missing"),
])
def test_a_faulty_manifest_is_refused_naming_the_field(exported, tmp_path, changes, message):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(exported, out)
    _reseal(out, **changes)
    with pytest.raises(ExportError, match=message):
        load_masker(out)


def test_an_edited_manifest_or_a_list_is_refused(exported, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(exported, out)
    manifest = json.loads((out / "masker.json").read_text())
    (out / "masker.json").write_text(json.dumps(dict(manifest, image_size=128)))  # without resealing
    with pytest.raises(ExportError, match="edited after export"):
        load_masker(out)
    (out / "masker.json").write_text("[1, 2]")
    with pytest.raises(ExportError, match="expected a JSON object, got a list"):
        load_masker(out)
    # claiming format 1 (from before manifest checksums) must not let an edit through
    for edit in ({}, {"image_size": 65}, {"mean": [0.4, 0.4, 0.4]}):
        downgraded = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
        (out / "masker.json").write_text(json.dumps(dict(downgraded, format_version=1, **edit)))
        with pytest.raises(ExportError, match="format_version 1 .* export the checkpoint again"):
            load_masker(out)


def test_exported_files_have_the_modes_any_new_file_gets(exported):
    """Readable by whoever the umask lets read new files (safetensors' own writer made the weights 0600)."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for name in ("masker.safetensors", "masker.json"):
        assert stat.S_IMODE((exported / name).stat().st_mode) == 0o666 & ~umask, name


def test_export_refuses_a_checkpoint_without_masker(tmp_path):
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "plain.ckpt")
    with pytest.raises(ExportError, match="plain.ckpt"):
        export_masker(tmp_path / "plain.ckpt", tmp_path / "out")


def test_export_names_a_checkpoint_whose_weights_do_not_fit(trained_checkpoint, tmp_path):
    """A checkpoint whose head layout differs (e.g. written by an older casm) fails in one line, not a traceback."""
    ckpt = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.startswith("masker.head."))
    ckpt["state_dict"]["masker.head.renamed"] = ckpt["state_dict"].pop(name)
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(ExportError, match=r"old.ckpt: its weights do not fit a resnet18 with the deconv head"):
        export_masker(tmp_path / "old.ckpt", tmp_path / "out")


@pytest.mark.parametrize("head", ["casme", "lfi", "abn", "lfi masker.feature_layer=layer3"])
def test_every_head_exports_exactly(head, tmp_path):
    from casm.config import load_config
    from casm.training.run import train
    from tests.conftest import TINY

    overrides = [f"logging.out_dir={tmp_path}", "trainer.max_epochs=1", *f"masker.head={head}".split()]
    run = train(load_config(None, TINY + overrides))
    ckpt = run / "checkpoints" / "last.ckpt"
    masker = load_masker(export_masker(ckpt, tmp_path / "export"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(masker(x), _training_masks(ckpt, x))


def test_explain_keeps_same_named_images_apart_and_reads_gifs(exported, tmp_path):
    from casm.export.explain import output_stems, write_explanations

    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "in" / folder / "same.png")
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "in" / "anim.gif", save_all=True, append_images=frames[1:])
    written, errors = write_explanations(load_masker(exported), [tmp_path / "in"], tmp_path / "out", progress=False)
    assert written == 3 and not errors
    assert {p.name for p in (tmp_path / "out").glob("*_box.json")} == {
        "anim_box.json", "a__same.png_box.json", "b__same.png_box.json"}
    assert output_stems([tmp_path / "x.png", tmp_path / "x.jpg"]) == ["x.png", "x.jpg"]
    # a file named like a joined path does not overwrite the image it imitates
    Image.fromarray(np.full((20, 30, 3), 30, np.uint8)).save(tmp_path / "in" / "a__same.png.png")
    written, errors = write_explanations(load_masker(exported), [tmp_path / "in"], tmp_path / "out2", progress=False)
    assert written == 4 and len(list((tmp_path / "out2").glob("*_box.json"))) == 4
    assert output_stems([tmp_path / "x.png", tmp_path / "x.png"]) == ["x.png", "x.png-2"]  # one file given twice


def test_loading_an_export_does_not_import_lightning(exported):
    """A deployed masker needs torch, not the training stack."""
    import subprocess
    import sys

    code = (f"import sys, casm; casm.load_masker({str(exported)!r}); "
            f"sys.exit(1 if 'pytorch_lightning' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.parametrize("data, expected", [
    ({"name": "synthetic", "image_size": 64}, 64),  # generated at its size: no resize
    ({"name": "imagenet", "image_size": 224}, 256),  # the paper's 256 / 224
    ({"name": "folder", "image_size": 96}, 96),  # a square image at the input size loses no pixel
    ({"name": "imagenet", "image_size": 224, "resize": 240}, 240),
    ({"name": "imagenet", "image_size": 224, "center_crop": False}, 224),  # resized whole
])
def test_the_evaluation_resize_is_one_rule_for_the_data_and_the_manifest(data, expected):
    from casm.config import load_config
    from casm.data.transforms import eval_geometry, eval_resize

    cfg = load_config(None, [f"data.{k}={v}" for k, v in data.items()] + ["data.root=/x"]).data
    assert eval_resize(cfg) == expected
    resizes = [t.size for t in eval_geometry(cfg) if type(t).__name__ == "Resize"]
    assert resizes in ([], [[expected]], [[expected, expected]], [(expected, expected)])


def test_the_manifest_records_the_resize_its_run_evaluated_with(trained_checkpoint):
    manifest = masker_from_checkpoint(trained_checkpoint).manifest
    assert manifest.resize == manifest.image_size == 32  # the built-in data (was 256/224 x size for every dataset)


def test_a_full_disk_under_explain_is_one_line_with_nothing_half_written(exported, tmp_path, full_disk, capsys):
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "a.png")
    full_disk(100)
    assert cli_main(["explain", str(exported), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                     "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write explanation" in err[0] and "free space" in err[0], err
    assert "logging.out_dir" not in err[0] and "--out" in err[0]
    assert [p.name for p in (tmp_path / "o").iterdir()] == []  # no 0-byte mask, no partial file


def test_a_full_disk_under_evaluate_leaves_no_report_and_a_rerun_redoes_it(trained_checkpoint, tmp_path, full_disk,
                                                                          capsys):
    from casm.config import EvalConfig, load_config
    from casm.experiments.runs import evaluation_done

    out = tmp_path / "eval"
    full_disk(0)
    assert cli_main(["evaluate", "--checkpoint", str(trained_checkpoint), f"out_dir={out}", "methods=[casm]",
                     "max_images=8", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write evaluation report" in err[0] and "out_dir" in err[0], err
    assert not (out / "metrics.json").exists() and not list(out.glob(".*.tmp"))
    wanted = load_config(None, [f"checkpoint={trained_checkpoint}"], schema_class=EvalConfig)
    out.mkdir(exist_ok=True)
    for broken in ("", "{", "[1, 2]"):  # what a crash of an older casm left: made again, never a crash
        (out / "metrics.json").write_text(broken)
        assert not evaluation_done(out, wanted)


def test_export_failures_leave_the_folder_as_it_was(trained_checkpoint, tmp_path, monkeypatch, full_disk, capsys):
    import casm.export.onnx as onnx_module

    out = tmp_path / "export"
    assert cli_main(["export", str(trained_checkpoint), str(out), "--onnx"]) == 0
    assert (out / "masker.onnx").is_file()
    assert cli_main(["export", str(trained_checkpoint), str(out)]) == 0  # again, without the graph
    assert sorted(p.name for p in out.iterdir()) == ["masker.json", "masker.safetensors"]  # no stale graph
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_onnxruntime():
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'casm-saliency[onnx]'")

    monkeypatch.setattr(onnx_module, "require_onnx", no_onnxruntime)
    monkeypatch.setattr("casm.export.standalone.require_onnx", no_onnxruntime)
    assert cli_main(["export", str(trained_checkpoint), str(tmp_path / "new"), "--onnx"]) == 2
    assert "pip install" in capsys.readouterr().err and not (tmp_path / "new").exists()
    monkeypatch.undo()
    full_disk(0)
    assert cli_main(["export", str(trained_checkpoint), str(out)]) == 2
    err = capsys.readouterr().err
    assert "free space" in err and "logging.out_dir" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_explain_refuses_no_images_and_counts_a_file_once(exported, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["explain", str(exported), str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2
    assert "no images in" in capsys.readouterr().err and not (tmp_path / "o").exists()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "empty" / "a.png")
    image = str(tmp_path / "empty" / "a.png")
    assert cli_main(["explain", str(exported), image, image, str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0
    assert "1 image(s) explained" in capsys.readouterr().out
    assert cli_main(["explain", str(exported / "masker.json"), image, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"give the export's folder ({exported})" in err and "casm export" not in err
