"""Tests for kdcore.data.files: torchvision-layout files (IDX for MNIST and Fashion-MNIST, pickles for CIFAR).

Offline and fast: small files are written here in the real formats, read back and compared with
what was written (and with torchvision's readers); a download is faked or made to fail.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data_helpers import (FILE_NAMES, all_parts, as_levels, index_of, write_cifar10, write_dataset,
                          write_idx_set)
from kdcore.data import Splits, dataset_info, files, load_dataset
from kdcore.errors import DatasetError


def check_against_written(splits: Splits, written: dict, image_shape: tuple[int, ...]) -> None:
    """Test rows keep the file's order; train and validation together are the training file."""
    test_pixels = as_levels(splits.test_x, splits, 255)
    expected_test = written["test_x"].astype(np.int64).reshape(-1, *image_shape)
    assert np.array_equal(test_pixels, expected_test)
    assert splits.test_y.tolist() == written["test_y"].tolist()
    seen = []
    for x, y in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y)):
        pixels = as_levels(x, splits, 255)
        rows = index_of(pixels)
        expected = written["train_x"][rows].astype(np.int64).reshape(-1, *image_shape)
        assert np.array_equal(pixels, expected)
        assert y.tolist() == written["train_y"][rows].tolist()
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(written["train_y"])))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"),
                                          ("fashion-mnist", "FashionMNIST/raw")])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_datasets(tmp_path, offline, name, folder, gz):
    written = write_idx_set(tmp_path / folder, gz=gz)
    assert dataset_info(name, root=str(tmp_path)).offline
    splits = load_dataset(name, root=str(tmp_path))
    check_against_written(splits, written, (1, 28, 28))
    assert len(splits.val_y) == 20 and splits.info.size == 250
    assert splits.class_names[0] == ("0" if name == "mnist" else "T-shirt/top")
    assert offline == []


def test_idx_reader_matches_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    write_idx_set(tmp_path, gz=False)
    for stem in ("train", "t10k"):
        images = files.read_idx(str(tmp_path / f"{stem}-images-idx3-ubyte"))
        labels = files.read_idx(str(tmp_path / f"{stem}-labels-idx1-ubyte"))
        assert np.array_equal(images, read_image_file(str(tmp_path / f"{stem}-images-idx3-ubyte")))
        assert np.array_equal(labels, read_label_file(str(tmp_path / f"{stem}-labels-idx1-ubyte")))


def test_truncated_idx_file(tmp_path, offline):
    folder = tmp_path / "MNIST" / "raw"
    write_idx_set(folder)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("mnist", root=str(tmp_path))


def test_fashion_mnist_found_in_system_folder(tmp_path, offline, monkeypatch):
    system = tmp_path / "system"
    written = write_idx_set(system)
    monkeypatch.setattr(files, "FASHION_SYSTEM_DIRS", (str(system),))
    root = str(tmp_path / "empty")
    assert dataset_info("fashion-mnist", root=root).offline
    check_against_written(load_dataset("fashion-mnist", root=root), written, (1, 28, 28))
    assert offline == []


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_real_fashion_mnist_from_debian_package(tmp_path):
    splits = load_dataset("fashion-mnist", root=str(tmp_path))
    assert [len(y) for _, y in all_parts(splits)] == [54000, 6000, 10000]
    assert torch.bincount(splits.test_y).tolist() == [1000] * 10
    assert splits.class_names[-1] == "Ankle boot"


@pytest.mark.parametrize("name, reference_class, val_fraction", [
    ("cifar10", "CIFAR10", 0.1), ("cifar100", "CIFAR100", 0.2)])
def test_cifar(tmp_path, offline, monkeypatch, name, reference_class, val_fraction):
    import torchvision.datasets

    written = write_dataset(name, tmp_path)
    splits = load_dataset(name, root=str(tmp_path), val_fraction=val_fraction)
    assert splits.info.input_shape == (3, 32, 32) and splits.class_names == written["names"]
    check_against_written(splits, written, (3, 32, 32))

    # torchvision reads the same files the same way (its checksums would reject our files)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    reference = getattr(torchvision.datasets, reference_class)(str(tmp_path), train=False)
    assert np.array_equal(as_levels(splits.test_x, splits, 255),
                          reference.data.transpose(0, 3, 1, 2))
    assert splits.test_y.tolist() == reference.targets
    assert splits.class_names == reference.classes


@pytest.mark.parametrize("name", FILE_NAMES)
def test_missing_files_say_where_to_put_what(tmp_path, offline, name):
    assert not dataset_info(name, root=str(tmp_path)).offline
    with pytest.raises(DatasetError) as error:
        load_dataset(name, root=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "could not be downloaded" in message
    assert os.path.join(str(tmp_path), files.LAYOUTS[name].folder) in message
    assert all(file_name in message for file_name in files.LAYOUTS[name].files)
    assert offline == [name], "a download is tried once before giving up"


def test_partly_present_files_count_as_missing(tmp_path, offline):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", root=str(tmp_path))


def test_missing_files_are_downloaded(tmp_path, monkeypatch):
    downloads = []

    def fake_download(name, root):
        downloads.append(name)
        write_dataset(name, Path(root))

    monkeypatch.setattr(files, "download", fake_download)
    splits = load_dataset("cifar10", root=str(tmp_path))
    assert downloads == ["cifar10"] and len(splits.test_y) == 50
    load_dataset("cifar10", root=str(tmp_path))
    assert downloads == ["cifar10"], "files already present are not downloaded again"
