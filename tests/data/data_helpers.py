"""Helpers for the kdcore.data tests: read normalised splits back as stored pixels, and write small
datasets in their real file formats (IDX, CIFAR pickles) whose rows can be traced back."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from kdcore.data import Splits, files

TOY_NAMES = ("moons", "circles", "blobs", "spirals")
FILE_NAMES = ("mnist", "fashion-mnist", "cifar10", "cifar100")


def unnormalise(x: torch.Tensor, splits: Splits) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    return x * torch.tensor(splits.std).view(shape) + torch.tensor(splits.mean).view(shape)


def as_levels(x: torch.Tensor, splits: Splits, levels: float) -> np.ndarray:
    """The stored integer pixel values behind normalised images, checked to be integers."""
    values = unnormalise(x, splits) * levels
    assert torch.allclose(values, values.round(), atol=1e-3)
    return values.round().to(torch.int64).numpy()


def row_set(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1).numpy()}


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    rows = rows.reshape(len(rows), -1)
    return rows[np.lexsort(rows.T[::-1])]


def all_parts(splits: Splits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(splits.train_x, splits.train_y), (splits.val_x, splits.val_y),
            (splits.test_x, splits.test_y)]


def numbered_images(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random uint8 images whose first two bytes spell their index, so rows can be traced."""
    images = np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)
    flat = images.reshape(count, -1)
    flat[:, 0], flat[:, 1] = np.arange(count) % 256, np.arange(count) // 256
    return images


def index_of(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    return flat[:, 0] + 256 * flat[:, 1]


def write_idx(path: Path, array: np.ndarray) -> None:
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_idx_set(folder: Path, gz: bool = True, n_train: int = 200, n_test: int = 50) -> dict:
    written = {
        "train_x": numbered_images(n_train, (28, 28), seed=1),
        "train_y": np.arange(n_train) % 10,
        "test_x": numbered_images(n_test, (28, 28), seed=2),
        "test_y": (np.arange(n_test) * 7) % 10,
    }
    suffix = ".gz" if gz else ""
    for prefix, split in (("train", "train"), ("t10k", "test")):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", written[f"{split}_x"])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", written[f"{split}_y"])
    return written


def pickle_to(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(record, protocol=2))


def write_cifar10(root: Path, per_batch: int = 40, n_test: int = 50) -> dict:
    folder = root / "cifar-10-batches-py"
    train_x = numbered_images(5 * per_batch, (3, 32, 32), seed=3)
    train_y = np.arange(5 * per_batch) % 10
    for i in range(5):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        pickle_to(folder / f"data_batch_{i + 1}", {
            "batch_label": f"training batch {i + 1} of 5",
            "data": train_x[rows].reshape(per_batch, 3072),
            "labels": train_y[rows].tolist(),
        })
    test_x, test_y = numbered_images(n_test, (3, 32, 32), seed=4), np.arange(n_test) % 10
    pickle_to(folder / "test_batch", {"data": test_x.reshape(n_test, 3072),
                                      "labels": test_y.tolist()})
    names = ["airplane", "automobile", "bird", "cat", "deer",
             "dog", "frog", "horse", "ship", "truck"]
    pickle_to(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "names": names}


def write_cifar100(root: Path, n_train: int = 500, n_test: int = 100) -> dict:
    folder = root / "cifar-100-python"
    train_x, train_y = numbered_images(n_train, (3, 32, 32), seed=5), np.arange(n_train) % 100
    test_x, test_y = numbered_images(n_test, (3, 32, 32), seed=6), np.arange(n_test)[::-1] % 100
    for file_name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        pickle_to(folder / file_name, {"data": x.reshape(len(x), 3072), "fine_labels": y.tolist(),
                                       "coarse_labels": (y // 5).tolist()})
    names = [f"class{i:02d}" for i in range(100)]
    pickle_to(folder / "meta", {"fine_label_names": names,
                                "coarse_label_names": [f"super{i}" for i in range(20)]})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "names": names}


def write_dataset(name: str, root: Path) -> dict:
    if name == "cifar10":
        return write_cifar10(root)
    if name == "cifar100":
        return write_cifar100(root)
    return write_idx_set(root / files.LAYOUTS[name].folder)
