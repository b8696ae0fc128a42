"""Fault injection: images a user's folder may hold. Each either reads as a sensible 8-bit RGB image
or is refused with one line naming the file, and ``casm explain`` still writes every other image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from casm.data.images import CorruptImageError, ImageTooLargeError, load_rgb
from casm.export.explain import batches, to_rgb_array


def _save_16bit_grey(path):
    import cv2

    cv2.imwrite(str(path), np.full((8, 8), 32768, np.uint16))


def _save_16bit_colour(path):  # OpenCV writes BGR: R = 65535, G = B = 32768
    import cv2

    image = np.full((8, 8, 3), 32768, np.uint16)
    image[..., 2] = 65535
    cv2.imwrite(str(path), image)


def _save_float_tiff(path):
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(path)


def _save_float_rgb_tiff(path):  # Pillow cannot open 3-channel float TIFF; OpenCV reads it
    import cv2

    cv2.imwrite(str(path), np.full((8, 8, 3), 0.5, np.float32))


def _save_cmyk(path):
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(path)  # pure magenta ink


def _save_animated_gif(path):
    frames = [Image.new("RGB", (8, 8), (v, v, v)) for v in (128, 0)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _save_one_pixel(path):
    Image.new("RGB", (1, 1), (128, 128, 128)).save(path)


def _save_png_named_jpg(path):  # the extension lies; the content decides
    Image.new("RGB", (8, 8), (128, 128, 128)).save(path, format="PNG")


@pytest.mark.parametrize("name,writer,expected", [
    ("grey16.png", _save_16bit_grey, (128, 128, 128)),  # clipped to 255 it would be all white
    ("colour16.png", _save_16bit_colour, (255, 128, 128)),
    ("float.tif", _save_float_tiff, (128, 128, 128)),
    ("float_rgb.tif", _save_float_rgb_tiff, (128, 128, 128)),
    ("cmyk.jpg", _save_cmyk, (255, 0, 255)),
    ("animated.gif", _save_animated_gif, (128, 128, 128)),  # its first frame
    ("one_pixel.png", _save_one_pixel, (128, 128, 128)),
    ("really_a_png.jpg", _save_png_named_jpg, (128, 128, 128)),
    ("ünïcødé 画像.png", _save_one_pixel, (128, 128, 128)),
])
def test_odd_but_valid_images_read_as_their_8bit_rgb_values(tmp_path, name, writer, expected):
    writer(tmp_path / name)
    image = np.asarray(load_rgb(tmp_path / name))
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert tuple(int(v) for v in image[0, 0]) == pytest.approx(expected, abs=1)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_empty_garbage_and_truncated_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(CorruptImageError, match=r"bad\.png") as raised:
        load_rgb(path)
    assert "skip_corrupt" not in str(raised.value)  # a training key: the training data path adds it (test_data)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    Image.new("1", (20000, 10000)).save(tmp_path / "bomb.png")  # 200 MP in 24 kB
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png is 20000x10000 = 200 MP.*decompression bombs"):
        load_rgb(tmp_path / "bomb.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    with pytest.raises(ImageTooLargeError, match="40x30"):
        load_rgb(tmp_path / "small.png", max_pixels=1000)
    assert load_rgb(tmp_path / "small.png", max_pixels=1200).size == (40, 30)


def test_non_finite_float_images_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(CorruptImageError, match="NaN"):
        load_rgb(tmp_path / "nan.tif")


def test_arrays_and_pil_images_of_any_depth_are_scaled_like_files():
    assert to_rgb_array(np.full((2, 2), 65535, np.uint16))[0, 0].tolist() == [255, 255, 255]
    assert to_rgb_array(np.full((2, 2, 3), 0.25, np.float32))[0, 0].tolist() == [64, 64, 64]
    sixteen_bit = Image.fromarray(np.full((2, 2), 32768, np.uint16))  # a PIL image in memory, mode I;16
    assert to_rgb_array(sixteen_bit)[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match=r"\(2, 2, 5\)"):
        to_rgb_array(np.zeros((2, 2, 5), np.uint8))


def test_batches_hold_few_large_images_at_once():
    sizes = [24_000_000, 24_000_000, 1000, 1000, 1000]
    groups = list(batches(sizes, lambda n: n, batch_size=2, pixel_budget=32_000_000))
    assert groups == [[24_000_000], [24_000_000, 1000], [1000, 1000]]
    assert list(batches([50_000_000], lambda n: n, batch_size=4, pixel_budget=10)) == [[50_000_000]]


def test_explain_skips_hostile_files_and_writes_the_rest(exported_masker, tmp_path):
    from casm.export.explain import write_explanations

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("1", (20000, 10000)).save(folder / "bomb.png")
    (folder / "empty.jpg").write_bytes(b"")
    _save_16bit_grey(folder / "scan16.png")
    _save_float_rgb_tiff(folder / "float.tif")
    Image.new("RGB", (30, 20), (200, 10, 10)).save(folder / "photo.jpg")
    written, errors = write_explanations(exported_masker, [folder], tmp_path / "out", progress=False)
    assert written == 3 and len(errors) == 2
    assert any("bomb.png" in e and "MP" in e for e in errors) and any("empty.jpg" in e for e in errors)
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == [
        "float_mask.png", "photo_mask.png", "scan16_mask.png"]
