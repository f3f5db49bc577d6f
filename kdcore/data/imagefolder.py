"""A user's own images, one subfolder per class (torchvision's ImageFolder layout).

    pets/cat/001.png
    pets/dog/a.jpg      ->  dataset name "imagefolder:pets", classes ("cat", "dog")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from kdcore.data.raw import RawData
from kdcore.dataset_names import IMAGE_EXTENSIONS, IMAGEFOLDER_PREFIX, DatasetInfo
from kdcore.errors import DatasetError

T = TypeVar("T")

IMAGE_SIZE = 32  # small enough to train on a CPU, and the same as CIFAR so its models fit
EXTENSIONS = IMAGE_EXTENSIONS
GRAYSCALE_MODES = frozenset({"1", "L", "LA"})


@dataclass(frozen=True)
class Listing:
    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    mode: str  # "L" when every image is grayscale, else "RGB"


def folder_of(name: str) -> str:
    return os.path.expanduser(name[len(IMAGEFOLDER_PREFIX):])


def scan(name: str) -> Listing:
    """Find the classes and image files, reading only image headers."""
    folder = folder_of(name)
    if not os.path.isdir(folder):
        raise DatasetError(f"{name}: folder {folder} does not exist")
    classes = sorted(entry.name for entry in os.scandir(folder)
                     if entry.is_dir() and not entry.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(f"{name}: found {len(classes)} class folder(s) in {folder}; put the "
                           f"images in one subfolder per class (at least 2), e.g. "
                           f"{os.path.join(folder, 'cat', '1.png')}")
    files, labels = [], []
    for label, class_name in enumerate(classes):
        found = _images_under(os.path.join(folder, class_name))
        if not found:
            raise DatasetError(f"{name}: class folder {os.path.join(folder, class_name)} "
                               f"has no images ({', '.join(EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    modes = {_read(name, path, lambda image: image.mode) for path in files}
    mode = "L" if modes <= GRAYSCALE_MODES else "RGB"
    return Listing(tuple(files), tuple(labels), tuple(classes), mode)


def info(name: str, listing: Listing | None = None) -> DatasetInfo:
    listing = listing or scan(name)
    channels = 1 if listing.mode == "L" else 3
    return DatasetInfo(name, f"your images in {folder_of(name)}",
                       (channels, IMAGE_SIZE, IMAGE_SIZE), len(listing.classes), "image",
                       offline=True, size=len(listing.files))


def load(name: str) -> tuple[DatasetInfo, RawData]:
    """Read every image, converted to the common mode and resized to IMAGE_SIZE square."""
    listing = scan(name)
    size = (IMAGE_SIZE, IMAGE_SIZE)

    def pixels_of(image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert(listing.mode).resize(size, Image.Resampling.BILINEAR))

    pixels = np.stack([_read(name, path, pixels_of) for path in listing.files])
    images = pixels[:, None] if listing.mode == "L" else pixels.transpose(0, 3, 1, 2)
    raw = RawData(np.ascontiguousarray(images), np.asarray(listing.labels, dtype=np.int64),
                  listing.classes, scale=255.0)
    return info(name, listing), raw


def _images_under(folder: str) -> list[str]:
    found = []
    for directory, subdirectories, file_names in os.walk(folder):
        subdirectories.sort()  # os.walk order is arbitrary; sorting makes the dataset deterministic
        found += [os.path.join(directory, file_name) for file_name in sorted(file_names)
                  if file_name.lower().endswith(EXTENSIONS)]
    return found


def _read(name: str, path: str, use: Callable[[Image.Image], T]) -> T:
    """Apply `use` to the opened image and close the file again."""
    try:
        with Image.open(path) as image:
            return use(image)
    except OSError as exc:  # unreadable, truncated, or not an image at all
        raise DatasetError(f"{name}: cannot read image {path}: {exc}") from exc
