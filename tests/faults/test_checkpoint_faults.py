"""Fault injection at every entry point that reads a checkpoint or weights file: a file crafted to run
code when unpickled must not run it, and a truncated file must not crash. Each gives exit code 2 and
one line naming the file."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from casm.cli import main as cli_main


class RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint does)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(params=["runs_code", "truncated"])
def hostile(request, trained_checkpoint, tmp_path):
    """(path of a hostile checkpoint, marker file that must never appear)."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "hostile.ckpt"
    if request.param == "runs_code":
        torch.save({"state_dict": RunsCode(marker), "hyper_parameters": {}}, path)
    else:
        data = trained_checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path, marker


ENTRY_POINTS = {
    "train resume": lambda bad, good, out: ["train", f"resume={bad}"],
    "train model.pretrained": lambda bad, good, out: ["train", f"model.pretrained={bad}"],
    "train masker.encoder_pretrained": lambda bad, good, out: ["train", "masker.encoder=separate",
                                                               f"masker.encoder_pretrained={bad}"],
    "evaluate --checkpoint": lambda bad, good, out: ["evaluate", "--checkpoint", str(bad), f"out_dir={out}"],
    "evaluate classifiers": lambda bad, good, out: ["evaluate", "--checkpoint", str(good), f"classifiers=[{bad}]",
                                                    f"out_dir={out}"],
    "evaluate baseline_classifiers": lambda bad, good, out: ["evaluate", "--checkpoint", str(good),
                                                             f"baseline_classifiers=[{bad}]", f"out_dir={out}"],
    "evaluate lficam_checkpoint": lambda bad, good, out: ["evaluate", "--checkpoint", str(good),
                                                          f"lficam_checkpoint={bad}", f"out_dir={out}"],
    "evaluate judges": lambda bad, good, out: ["evaluate", "--checkpoint", str(good), f"out_dir={out}",
                                               f"judges=[{{builder: torchvision.models.resnet18, weights: {bad}}}]"],
    "export": lambda bad, good, out: ["export", str(bad), str(out)],
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_hostile_checkpoint_is_refused_at_every_entry_point(entry, hostile, trained_checkpoint, tiny_overrides,
                                                              tmp_path, capsys):
    bad, marker = hostile
    argv = ENTRY_POINTS[entry](bad, trained_checkpoint, tmp_path / "out")
    if argv[0] == "train":
        argv += tiny_overrides
    else:
        argv += ["--no-progress"] if argv[0] == "evaluate" else []
    code = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert not marker.exists(), "unpickling ran code"
    assert code == 2 and len(err) == 1 and "hostile.ckpt" in err[0], err
    assert "weights_only=False" not in err[0] and "set to `False`" not in err[0], "points the user at the unsafe load"


@pytest.mark.parametrize("damage", ["weights_truncated", "weights_pickle", "manifest_truncated", "manifest_missing"])
def test_a_damaged_export_is_refused_naming_the_file(exported_dir, tmp_path, damage):
    from casm.export import ExportError, load_masker

    copy = tmp_path / "export"
    shutil.copytree(exported_dir, copy)
    weights, manifest = copy / "masker.safetensors", copy / "masker.json"
    if damage == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "weights_pickle":
        torch.save({"x": RunsCode(tmp_path / "code_ran")}, weights)
    elif damage == "manifest_truncated":
        manifest.write_text(manifest.read_text()[:40])
    else:
        manifest.unlink()
    with pytest.raises((ExportError, FileNotFoundError), match="masker"):
        load_masker(copy)
    assert not (tmp_path / "code_ran").exists()


def test_the_crafted_checkpoint_really_runs_code_when_loaded_unsafely(tmp_path):
    """The suite's exploit is real: without weights_only=True it would have run (so the tests above can fail)."""
    torch.save({"state_dict": RunsCode(tmp_path / "code_ran")}, tmp_path / "x.ckpt")
    torch.load(tmp_path / "x.ckpt", weights_only=False)
    assert (tmp_path / "code_ran").exists()
