"""Your own data without surprises: augmentation and evaluation geometry under config control, a
warm-up that waits for the classifier, one console line per epoch, evaluations that never overwrite
each other, figure images across classes, ImageNet box folders where the archive puts them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from casm.config import ConfigError, DataConfig, load_config
from casm.data.datamodule import LocalizationDataModule
from casm.data.datasets import imagenet_split
from casm.data.transforms import train_transform
from casm.evaluation.harness import figure_picks, next_free_folder
from tests.conftest import TINY


def _data(**kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), kw)


def _folder(root, size=64, classes=("a", "b"), per_class=3, box=(0, 0, 20, 20)):
    """Images already at the input size, each with one box touching the top-left corner; the left half
    of every image is white and the right half black, so a flip is visible."""
    rows = []
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.zeros((size, size, 3), np.uint8)
                pixels[:, : size // 2] = 255
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
                rows.append(f"{c}/{i}.png,{','.join(map(str, box))}")
    (root / "val_boxes.csv").write_text("\n".join(rows[len(rows) // 2:]))
    return root


def test_evaluation_keeps_boxes_of_images_already_at_the_input_size(tmp_path):
    dm = LocalizationDataModule(_data(name="folder", root=str(_folder(tmp_path)), image_size=64))
    dm.setup()
    assert dm.val_set[0]["boxes"].tolist() == [[0.0, 0.0, 20.0, 20.0]]  # before: Resize(73) + crop clipped it
    imagenet_like = LocalizationDataModule(_data(name="folder", root=str(tmp_path), image_size=64, resize=73))
    imagenet_like.setup()
    assert imagenet_like.val_set[0]["boxes"][0, 2] < 20  # the old geometry, still available on request
    whole = LocalizationDataModule(_data(name="folder", root=str(tmp_path), image_size=32, center_crop=False))
    whole.setup()
    assert whole.val_set[0]["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]]


@pytest.mark.parametrize("flip", [False, True])
def test_flips_only_when_asked(tmp_path, flip):
    dm = LocalizationDataModule(_data(name="folder", root=str(_folder(tmp_path)), image_size=64, random_crop=False,
                                      flip=flip, num_workers=0))
    dm.setup()
    lefts = {float(dm.train_set[0]["image"][0, :, :8].float().mean()) > 127 for _ in range(40)}
    assert lefts == ({True, False} if flip else {True})  # white stays left unless flipped


def test_photo_defaults_and_synthetic_defaults():
    photos = train_transform(_data(name="folder", root="x", crop_scale=[0.5, 1.0]))
    names = [type(t).__name__ for t in photos.transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"] and photos.transforms[0].scale == (0.5, 1.0)
    shapes = [type(t).__name__ for t in train_transform(_data()).transforms]
    assert "RandomHorizontalFlip" not in shapes and "RandomResizedCrop" not in shapes
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config(None, ["data.crop_scale=[0.5,2]"])


def test_warmup_waits_for_the_classifier(tiny_cfg):
    """Reached at once (the cap is 3 epochs): the masker starts after epoch 0. Never reached: the warm-up
    runs to its cap and the masker never steps in 2 epochs."""
    from casm.checkpoints import read_checkpoint
    from casm.training.run import train

    quick = train(tiny_cfg("casm.warmup_epochs=3", "casm.warmup_accuracy=0.01", "logging.name=quick"))
    state = read_checkpoint(quick / "checkpoints" / "last.ckpt")["casm_state"]
    assert state["warmup_end_epoch"] == 1 and state["casm_step"] == 4  # epoch 1's 4 batches
    capped = train(tiny_cfg("casm.warmup_epochs=2", "casm.warmup_accuracy=1.0", "logging.name=capped"))
    state = read_checkpoint(capped / "checkpoints" / "last.ckpt")["casm_state"]
    assert state["warmup_end_epoch"] == 2 and state["casm_step"] == 0
    with pytest.raises(ConfigError, match="warmup_accuracy"):
        tiny_cfg("casm.warmup_accuracy=0.5")  # needs warmup_epochs > 0 as its cap


def test_one_line_per_epoch_without_a_progress_bar(tiny_cfg, capsys):
    from casm.training.run import train

    train(tiny_cfg("casm.warmup_epochs=1"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 0/1 warm-up") and lines[1].startswith("epoch 1/1 CASM")
    for part in ("top-1 ", "mask ", "LE ", "OM ", "centred box ", "λ_R ", " s"):
        assert part in lines[1], part


def test_a_second_evaluation_gets_its_own_folder(trained_checkpoint):
    from casm.cli import evaluate_main

    run = trained_checkpoint.resolve().parent.parent
    args = ["--checkpoint", str(trained_checkpoint), "methods=[casm]", "max_images=8", "--no-progress"]
    assert evaluate_main(args) == 0 and evaluate_main(args + ["binarization=alpha_mean"]) == 0
    first, second = json.loads((run / "eval" / "metrics.json").read_text()), \
        json.loads((run / "eval_2" / "metrics.json").read_text())
    assert first["eval_config"]["binarization"] == "quantile" and second["eval_config"]["binarization"] == "alpha_mean"
    assert next_free_folder(run / "eval") == run / "eval_3"


def test_figure_images_are_picked_across_classes():
    labels = [0] * 10 + [1] * 10 + [2] * 3
    assert figure_picks(labels, 4) == [0, 1, 10, 20] and figure_picks(labels, 8) == [0, 1, 2, 10, 11, 12, 20, 21]
    assert figure_picks([0, 0], 8) == [0, 1]


@pytest.mark.parametrize("layout", ["bbox_val/val", "bbox_val", "val"])
def test_imagenet_box_archive_folders_are_found(tmp_path, layout):
    xml = ("<annotation><object><name>n01</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax><ymax>19</ymax>"
           "</bndbox></object></annotation>")
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / layout).mkdir(parents=True, exist_ok=True)
    (tmp_path / layout / "ILSVRC2012_val_00000001.xml").write_text(xml)
    ds = imagenet_split(tmp_path, "val")
    assert len(ds) == 1 and ds.records[0][2] == [[1.0, 2.0, 10.0, 20.0]]


def test_tiny_training_with_every_augmentation_key(tmp_path):
    from casm.training.run import train

    root = _folder(tmp_path / "data", size=40, per_class=16)
    cfg = load_config(None, TINY + [f"logging.out_dir={tmp_path / 'runs'}", "data.name=folder", f"data.root={root}",
                                    "data.num_workers=0", "data.crop_scale=[0.5,1.0]", "data.flip=false",
                                    "trainer.max_epochs=1"])
    assert (train(cfg) / "checkpoints" / "last.ckpt").exists()
