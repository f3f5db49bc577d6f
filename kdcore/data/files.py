"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 in torchvision's on-disk layout.

The files are read directly (IDX with numpy, CIFAR's pickled batches) rather than through
torchvision's dataset classes: that is fast, accepts .gz or unpacked IDX files, and does not
reject files whose checksum differs from the official download. torchvision is used only to
download missing files.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass

import numpy as np

from kdcore.data.builtin import DIGIT_NAMES
from kdcore.data.raw import RawData
from kdcore.errors import DatasetError

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Debian's dataset-fashion-mnist package installs the four IDX files here.
FASHION_SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)


@dataclass(frozen=True)
class Layout:
    folder: str  # relative to the data root, as torchvision lays it out
    files: tuple[str, ...]
    torchvision_class: str  # in torchvision.datasets, used to download


LAYOUTS: dict[str, Layout] = {
    "mnist": Layout("MNIST/raw", IDX_FILES, "MNIST"),
    "fashion-mnist": Layout("FashionMNIST/raw", IDX_FILES, "FashionMNIST"),
    "cifar10": Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        "CIFAR10",
    ),
    "cifar100": Layout("cifar-100-python", ("train", "test", "meta"), "CIFAR100"),
}


def _present(folder: str, file_name: str) -> str | None:
    """The path of `file_name` in `folder`; an IDX file may also be there unpacked."""
    candidates = [file_name]
    if file_name.endswith(".gz"):
        candidates.insert(0, file_name[: -len(".gz")])  # unpacked reads faster
    for candidate in candidates:
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def find_folder(name: str, root: str) -> str | None:
    """The folder that holds all of dataset `name`'s files, or None when they are missing."""
    layout = LAYOUTS[name]
    folders = [os.path.join(root, layout.folder)]
    if name == "fashion-mnist":
        folders += FASHION_SYSTEM_DIRS
    for folder in folders:
        if all(_present(folder, file_name) for file_name in layout.files):
            return folder
    return None


def download(name: str, root: str) -> None:
    """Fetch the official files into `root` with torchvision (needs network)."""
    from torchvision import datasets

    getattr(datasets, LAYOUTS[name].torchvision_class)(root, train=True, download=True)


def load(name: str, root: str) -> RawData:
    """Read dataset `name` from `root`, downloading it first when its files are missing."""
    folder = find_folder(name, root)
    if folder is None:
        try:
            download(name, root)
        except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError, ...
            raise DatasetError(_missing_message(name, root)) from exc
        folder = find_folder(name, root)
        if folder is None:
            raise DatasetError(_missing_message(name, root))
    if name in ("mnist", "fashion-mnist"):
        return _read_idx_set(folder, DIGIT_NAMES if name == "mnist" else FASHION_NAMES)
    if name == "cifar10":
        return _read_cifar(folder, LAYOUTS[name].files[:5], "test_batch", "batches.meta",
                           label_key="labels", names_key="label_names")
    return _read_cifar(folder, ("train",), "test", "meta",
                       label_key="fine_labels", names_key="fine_label_names")


def _missing_message(name: str, root: str) -> str:
    layout = LAYOUTS[name]
    folder = os.path.join(root, layout.folder)
    message = (f"{name}: files not found in {folder} and could not be downloaded (offline?). "
               f"Put {', '.join(layout.files)} there")
    if name == "fashion-mnist":
        message += " (or, on Debian/Ubuntu, apt-get install dataset-fashion-mnist)"
    return message


def read_idx(path: str) -> np.ndarray:
    """Read an unsigned-byte IDX file (the MNIST format), gzipped or plain."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    # header: two zero bytes, type code 0x08 (unsigned byte), number of dimensions,
    # then each dimension as a big-endian uint32
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    body_start = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:body_start])
    if len(data) - body_start != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: its header promises shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=body_start).reshape(shape)


def _read_idx_set(folder: str, class_names: tuple[str, ...]) -> RawData:
    def images_and_labels(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images_path = _present(folder, f"{prefix}-images-idx3-ubyte.gz")
        labels_path = _present(folder, f"{prefix}-labels-idx1-ubyte.gz")
        images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{images_path} and {labels_path} do not match: "
                               f"{images.shape} images, {labels.shape} labels")
        _check_labels(labels, class_names, labels_path)
        return images[:, None], labels

    train_x, train_y = images_and_labels("train")
    test_x, test_y = images_and_labels("t10k")
    return RawData(train_x, train_y, class_names, scale=255.0, test_x=test_x, test_y=test_y)


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as stream:
            return pickle.load(stream, encoding="latin1")  # the batches were pickled by Python 2
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def _read_cifar(folder: str, train_files: tuple[str, ...], test_file: str, meta_file: str,
                label_key: str, names_key: str) -> RawData:
    meta_path = os.path.join(folder, meta_file)
    class_names = tuple(_field(_unpickle(meta_path), names_key, meta_path))

    def batches(file_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for file_name in file_names:
            path = os.path.join(folder, file_name)
            batch = _unpickle(path)
            # each row holds the 1024 red, then green, then blue values of one 32x32 image
            images.append(np.asarray(_field(batch, "data", path), dtype=np.uint8)
                          .reshape(-1, 3, 32, 32))
            labels.append(np.asarray(_field(batch, label_key, path), dtype=np.int64))
            if len(images[-1]) != len(labels[-1]):
                raise DatasetError(f"{path} has {len(images[-1])} images "
                                   f"but {len(labels[-1])} labels")
            _check_labels(labels[-1], class_names, path)
        return np.concatenate(images), np.concatenate(labels)

    train_x, train_y = batches(train_files)
    test_x, test_y = batches((test_file,))
    return RawData(train_x, train_y, class_names, scale=255.0, test_x=test_x, test_y=test_y)


def _field(record: dict, key: str, path: str):
    if not isinstance(record, dict) or key not in record:
        raise DatasetError(f"{path} has no {key!r} entry; is it a CIFAR python-version file?")
    return record[key]


def _check_labels(labels: np.ndarray, class_names: tuple[str, ...], path: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DatasetError(f"{path} has labels outside 0..{len(class_names) - 1}")
