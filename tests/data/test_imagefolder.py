"""Tests for kdcore.data.imagefolder: a user's own images, one subfolder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import all_parts, as_levels
from kdcore.data import dataset_info, load_dataset
from kdcore.errors import DatasetError


def write_png(path: Path, mode: str, size: tuple[int, int], color) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_image_folder(folder: Path, per_class: int = 15, rgb_dog: bool = False) -> None:
    for i in range(per_class):
        write_png(folder / "cat" / f"{i:02d}.png", "L", (20 + i, 24), 50)
        if rgb_dog:
            write_png(folder / "dog" / f"{i:02d}.png", "RGB", (40, 30), (200, 100, 0))
        else:
            subfolder = "puppies" if i % 2 else "."  # nested folders belong to their class
            write_png(folder / "dog" / subfolder / f"{i:02d}.png", "L", (40, 40), 200)
    (folder / "cat" / "notes.txt").write_text("not an image")


def test_imagefolder_grayscale(tmp_path):
    write_image_folder(tmp_path / "pets")
    name = f"imagefolder:{tmp_path / 'pets'}"
    info = dataset_info(name)
    assert (info.input_shape, info.num_classes, info.size, info.kind) == ((1, 32, 32), 2, 30, "image")
    splits = load_dataset(name)
    assert splits.class_names == ["cat", "dog"] and splits.info == info
    assert [len(y) for _, y in all_parts(splits)] == [21, 3, 6]
    for x, y in all_parts(splits):
        pixels = as_levels(x, splits, 255)
        expected = np.where(y.numpy() == 0, 50, 200)[:, None, None, None]
        assert np.array_equal(pixels, np.broadcast_to(expected, pixels.shape))


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    write_image_folder(tmp_path, rgb_dog=True)
    splits = load_dataset(f"imagefolder:{tmp_path}")
    assert splits.info.input_shape == (3, 32, 32) and splits.train_x.shape[1:] == (3, 32, 32)
    pixels = as_levels(splits.train_x, splits, 255)
    dogs = pixels[splits.train_y.numpy() == 1]
    assert (dogs[:, 0] == 200).all() and (dogs[:, 1] == 100).all() and (dogs[:, 2] == 0).all()
    cats = pixels[splits.train_y.numpy() == 0]
    assert (cats == 50).all()


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")

    write_png(tmp_path / "one" / "cat" / "a.png", "L", (8, 8), 0)
    with pytest.raises(DatasetError, match="found 1 class folder"):
        dataset_info(f"imagefolder:{tmp_path / 'one'}")

    write_image_folder(tmp_path / "empty")
    for image in (tmp_path / "empty" / "dog").rglob("*.png"):
        image.unlink()
    with pytest.raises(DatasetError, match=r"dog has no images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")

    write_image_folder(tmp_path / "few", per_class=2)
    with pytest.raises(DatasetError, match="too few examples"):
        load_dataset(f"imagefolder:{tmp_path / 'few'}")

    write_image_folder(tmp_path / "broken")
    (tmp_path / "broken" / "cat" / "00.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image .*00.png"):
        load_dataset(f"imagefolder:{tmp_path / 'broken'}")
