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


def test_an_imagefolder_teacher_is_cached_under_the_folders_images(tmp_path, monkeypatch):
    from kdcore import dataset_names
    from kdcore.config import RunConfig

    monkeypatch.setattr(dataset_names, "LISTING_TTL_S", 0.0)  # every key walks the folder again
    write_image_folder(tmp_path / "pets", per_class=3)
    config = RunConfig.from_dict({"dataset": f"imagefolder:{tmp_path / 'pets'}"})
    key = config.teacher_key()
    assert RunConfig.from_dict(config.to_dict()).teacher_key() == key
    (tmp_path / "pets" / "cat" / "more notes.txt").write_text("still not an image")
    assert config.teacher_key() == key  # only images count
    write_png(tmp_path / "pets" / "dog" / "new.png", "L", (40, 40), 100)
    added = config.teacher_key()
    assert added != key
    write_png(tmp_path / "pets" / "dog" / "new.png", "L", (40, 41), 100)  # the same name, another image
    assert config.teacher_key() not in (key, added)
    (tmp_path / "pets" / "dog" / "new.png").unlink()
    assert config.teacher_key() == key  # the same images again: the same teacher
    assert RunConfig.from_dict({"dataset": f"imagefolder:{tmp_path / 'gone'}"}).teacher_key() != key


def test_a_pages_many_keys_walk_the_folder_once(tmp_path, monkeypatch):
    from kdcore import dataset_names

    monkeypatch.setattr(dataset_names, "LISTING_TTL_S", 3600.0)
    write_image_folder(tmp_path / "pets", per_class=2)
    name = f"imagefolder:{tmp_path / 'pets'}"
    first = dataset_names.imagefolder_digest(name)
    write_png(tmp_path / "pets" / "dog" / "new.png", "L", (40, 40), 100)
    assert dataset_names.imagefolder_digest(name) == first  # within LISTING_TTL_S: the walk is reused
