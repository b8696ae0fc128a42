"""Datasets: the synthetic set's determinism, class subsets, box files and box transforms."""

import csv

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from casm.config import DataConfig
from casm.data import synthetic
from casm.data.datamodule import LocalizationDataModule, collate_with_boxes
from casm.data.datasets import CorruptImageError, SplitOptions, SyntheticShapes, folder_split, imagenet_split


def test_synthetic_is_deterministic_and_boxes_bound_the_object():
    a = synthetic.render_sample(3, synthetic.sample_rng(0, "train", 7), 64)
    b = synthetic.render_sample(3, synthetic.sample_rng(0, "train", 7), 64)
    c = synthetic.render_sample(3, synthetic.sample_rng(0, "val", 7), 64)
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)
    ys, xs = np.nonzero(a.mask)
    assert a.box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    area = (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) / 64**2
    assert 0.1 < area < 0.8


def test_synthetic_class_subsets():
    ds = SyntheticShapes("train", 40, 32, include=["0", "2", synthetic.CLASS_NAMES[5]])
    assert ds.classes == [synthetic.CLASS_NAMES[i] for i in (0, 2, 5)]
    assert {label for _, label in ds.samples} == {0, 1, 2}
    ds = SyntheticShapes("train", 40, 32, exclude=[str(i) for i in range(7)])
    assert len(ds.classes) == 3
    with pytest.raises(ValueError, match="unknown classes"):
        SyntheticShapes("train", 4, 32, include=["dragon"])


def _jpeg(path, size=(400, 300)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


XML = """<annotation><size><width>400</width><height>300</height></size>
<object><name>{synset}</name><bndbox><xmin>100</xmin><ymin>50</ymin><xmax>199</xmax><ymax>149</ymax></bndbox></object>
<object><name>{synset}</name><bndbox><xmin>350</xmin><ymin>0</ymin><xmax>399</xmax><ymax>299</ymax></bndbox></object>
</annotation>"""

# Resize(256) of 400x300 -> 341x256 (x scale 341/400, y scale 256/300); CenterCrop(224) starts at
# x = round((341 - 224) / 2) = 58, y = round((256 - 224) / 2) = 16. Box [100, 50, 200, 150] (XML
# xmax/ymax are inclusive) maps to x0 = 100*341/400 - 58, y0 = 50*256/300 - 16, and so on. The
# second box lands at x >= 240: outside the crop, clamped to zero width and marked invalid.
EXPECTED = [100 * 341 / 400 - 58, 50 * 256 / 300 - 16, 200 * 341 / 400 - 58, 150 * 256 / 300 - 16]


@pytest.fixture
def fake_imagenet(tmp_path):
    for synset in ("n01440764", "n01443537"):
        _jpeg(tmp_path / "train" / synset / f"{synset}_1.JPEG")
    _jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    _jpeg(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG")
    (tmp_path / "val_xml").mkdir()
    for i, synset in ((1, "n01443537"), (2, "n01440764")):
        (tmp_path / "val_xml" / f"ILSVRC2012_val_0000000{i}.xml").write_text(XML.format(synset=synset))
    return tmp_path


def _datamodule(root, name, **kw):
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig),
                          dict(name=name, root=str(root), image_size=224, batch_size=2, num_workers=0, **kw))
    dm = LocalizationDataModule(cfg)
    dm.setup()
    return dm


def test_fake_imagenet_xml_boxes_follow_resize_and_crop(fake_imagenet):
    dm = _datamodule(fake_imagenet, "imagenet")
    assert dm.classes == ["n01440764", "n01443537"]
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 224, 224)
    assert batch["label"].tolist() == [1, 0]
    assert torch.allclose(batch["boxes"][0, 0], torch.tensor(EXPECTED), atol=1e-3)
    assert batch["box_valid"][0].tolist() == [True, False]


def test_fake_imagenet_csv_boxes(fake_imagenet, tmp_path):
    csv_path = tmp_path / "LOC_val_solution.csv"
    csv_path.write_text("ImageId,PredictionString\n"
                        "ILSVRC2012_val_00000001,n01443537 100 50 199 149 \n"
                        "ILSVRC2012_val_00000002,n01440764 0 0 399 299 \n")
    ds = imagenet_split(fake_imagenet, "val", SplitOptions(
        boxes_file=csv_path, transform=_datamodule(fake_imagenet, "imagenet").val_set.transform))
    sample = ds[0]
    assert sample["label"] == 1
    assert torch.allclose(sample["boxes"][0], torch.tensor(EXPECTED), atol=1e-3)


def test_folder_tree_with_box_csv_and_corrupt_images(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            _jpeg(tmp_path / split / c / "a.png", size=(64, 64))
    (tmp_path / "val" / "dog" / "broken.png").write_bytes(b"not an image")
    with open(tmp_path / "val_boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "x0", "y0", "x1", "y1"], ["cat/a.png", 0, 0, 32, 32],
                                 ["cat/a.png", 32, 32, 64, 64]])
    ds = folder_split(tmp_path, "val")
    assert [len(r[2]) for r in ds.records] == [2, 0, 0]
    with pytest.raises(CorruptImageError, match="broken.png"):
        [ds[i] for i in range(len(ds))]
    skipping = folder_split(tmp_path, "val", SplitOptions(skip_corrupt=True))
    batch = collate_with_boxes([skipping[i] for i in range(len(skipping))])
    assert batch["skipped"] == 1 and batch["image"].shape[0] == 2


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folder_split(tmp_path / "nowhere", "train")


def test_greyscale_and_rgba_are_converted(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / split / "a" / "grey.png")
        Image.fromarray(np.zeros((20, 20, 4), np.uint8)).save(tmp_path / split / "a" / "rgba.png")
    ds = folder_split(tmp_path, "val")
    assert all(ds[i]["image"].shape[0] == 3 for i in range(2))


def _two_class_tree(root):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            _jpeg(root / split / c / "a.png", size=(64, 48))
    return root


@pytest.mark.parametrize("row,message", [
    (["cat/a.png", 10, 10, 5, 20], "not a box"),  # x1 < x0
    (["cat/a.png", "nan", 0, 5, 5], "not a box"),
    (["cat/a.png", 0, 0, "inf", 5], "not a box"),
    (["cat/a.png", -3, 0, 5, 5], "not a box"),
    (["cat/a.png", "left", 0, 5, 5], "expected image,x0,y0,x1,y1"),
    (["cat/missing.png", 0, 0, 5, 5], "name images that are not in"),
])
def test_malformed_box_rows_name_the_file_and_line(tmp_path, row, message):
    root = _two_class_tree(tmp_path)
    with open(root / "val_boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "x0", "y0", "x1", "y1"], row])
    with pytest.raises(ValueError, match=message) as err:
        folder_split(root, "val")
    assert "val_boxes.csv" in str(err.value)


def test_box_outside_its_image_names_the_image(tmp_path):
    root = _two_class_tree(tmp_path)
    (root / "val_boxes.csv").write_text("cat/a.png,0,0,64,60\n")  # the image is 64x48
    with pytest.raises(ValueError, match=r"a.png reaches outside the 64x48 image"):
        folder_split(root, "val")[0]


def test_empty_class_folders_are_refused_and_symlinked_folders_followed(tmp_path):
    root = _two_class_tree(tmp_path / "data")
    (root / "train" / "empty").mkdir()
    (root / "val" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"train/empty holds no images"):
        folder_split(root, "train")
    (root / "train" / "empty").rmdir()
    (root / "val" / "empty").rmdir()
    _jpeg(tmp_path / "elsewhere" / "b.png", size=(64, 48))
    (root / "train" / "dog" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert sorted(p.name for p, _, _ in folder_split(root, "train").records) == ["a.png", "a.png", "b.png"]


def test_a_corrupt_training_image_is_one_line_with_the_fix(tmp_path, capsys):
    from casm.cli import train_main
    from tests.conftest import TINY

    root = tmp_path / "data"
    for c in ("cat", "dog"):
        for i in range(4):
            for split in ("train", "val"):
                _jpeg(root / split / c / f"{i}.png", size=(40, 40))
    (root / "train" / "dog" / "3.png").write_bytes(b"not an image")
    code = train_main(TINY + [f"logging.out_dir={tmp_path / 'runs'}", "data.name=folder", f"data.root={root}",
                              "data.batch_size=4", "data.num_workers=1", "trainer.max_epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "3.png" in err[0] and "data.skip_corrupt=true" in err[0]


def test_normalizing_on_the_device_gives_the_bits_of_torchvision_in_the_workers():
    import torch
    from torchvision.transforms import v2

    from casm.data.images import IMAGENET_MEAN, IMAGENET_STD
    from casm.data.transforms import normalize_images

    images = torch.randint(0, 256, (4, 3, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    workers = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.equal(normalize_images(images), torch.stack([workers(i) for i in images]))
    with pytest.raises(TypeError, match="uint8"):
        normalize_images(images.float())


def test_shuffled_labels_keep_the_images_and_the_class_counts():
    from casm.data.datamodule import LocalizationDataModule

    data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"num_train": 200, "num_val": 10, "image_size": 32,
                                                               "shuffle_labels": True})
    shuffled = LocalizationDataModule(data)
    plain = LocalizationDataModule(OmegaConf.merge(data, {"shuffle_labels": False}))
    shuffled.setup()
    plain.setup()
    a, b = shuffled.train_set, plain.train_set
    assert sorted(a.labels) == sorted(b.labels) and a.labels != b.labels
    moved = sum(x != y for x, y in zip(a.labels, b.labels))
    assert moved > 150  # about 90 % of the labels change with 10 classes
    assert torch.equal(a[3]["image"], b[3]["image"]) and a[3]["label"] == a.labels[3]
    assert shuffled.val_set.labels == plain.val_set.labels  # validation keeps its true labels


def test_synthetic_validation_images_carry_their_object_pixels_inside_their_box():
    from casm.data.datamodule import collate_with_boxes
    from casm.data.datasets import SyntheticShapes

    val = SyntheticShapes("val", 4, 64)
    batch = collate_with_boxes([val[i] for i in range(4)])
    masks, boxes = batch["object_mask"], batch["boxes"][:, 0].long()
    assert masks.shape == (4, 64, 64) and masks.dtype == torch.bool
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
        ys, xs = mask.nonzero(as_tuple=True)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)  # the box is the mask's
    assert "object_mask" not in SyntheticShapes("train", 2, 64)[0]  # training never needs them
