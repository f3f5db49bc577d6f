"""Loading a dataset by name into normalised train / validation / test tensors."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kdcore.data import builtin, files, imagefolder, text
from kdcore.data.raw import RawData
from kdcore.dataset_names import (CATALOGUE, DATASET_NAMES, MAX_TOKENS, DatasetInfo, is_csv, is_imagefolder,
                                  validate_dataset_name)
from kdcore.errors import DatasetError

TEST_FRACTION = 0.2  # for datasets without an official test split
SPLIT_SEED = 0  # fixed, independent of the run seed, so every run is scored on the same test set

BUILTIN: dict[str, Callable[[], RawData]] = {
    "mnist-5k": builtin.mnist_5k,
    "digits": builtin.digits,
    "moons": builtin.moons,
    "circles": builtin.circles,
    "blobs": builtin.blobs,
    "spirals": builtin.spirals,
}


@dataclass
class Splits:
    """A dataset split three ways. x is float32, normalised per channel with the train split's
    statistics; y is int64. Every load returns fresh tensors, so callers may modify them."""

    info: DatasetInfo
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]
    # per channel (per feature for points), in [0, 1] pixel units: raw = x * std + mean
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # which training examples carry their own label (bool [N]); the others carry the teacher's prediction
    # (`kdcore.data.transfer`). None: every one is labelled, as loaded.
    train_labeled: Tensor | None = None
    val_texts: list[str] | None = None  # text datasets: the validation sentences as written, for display
    tokenizer: str | None = None  # text datasets: the tokenizer that made the ids (`kdcore.data.text`)

    @property
    def black(self) -> tuple[float, ...]:
        """A black pixel, per channel, in these normalised units: what CIFAR's standard crop pads with."""
        return tuple(-mean / std for mean, std in zip(self.mean, self.std))

    def to(self, device: torch.device | str) -> Splits:
        """A copy with every tensor on `device`."""
        moved = {field: getattr(self, field).to(device)
                 for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "train_labeled")
                 if getattr(self, field) is not None}
        return dataclasses.replace(self, **moved)

    def to_memory_format(self, memory_format: torch.memory_format) -> Splits:
        """A copy whose image tensors use `memory_format` (e.g. channels_last for cuDNN)."""
        converted = {field: getattr(self, field).contiguous(memory_format=memory_format)
                     for field in ("train_x", "val_x", "test_x")}
        return dataclasses.replace(self, **converted)


def default_root() -> str:
    """Where downloadable datasets live: $KDCORE_DATA, else ./data."""
    return os.environ.get("KDCORE_DATA", "./data")


def list_datasets(root: str | None = None) -> list[DatasetInfo]:
    """Every named dataset, with `offline` telling whether it can be loaded here without network.

    Cheap: only checks which files exist; reads no pixels.
    """
    return [dataset_info(name, root) for name in DATASET_NAMES]


def dataset_info(name: str, root: str | None = None, *, text_column: str = "text",
                 label_column: str = "label") -> DatasetInfo:
    """Shape, classes and availability of dataset `name` without loading it.

    For "imagefolder:<path>" this lists the folder and reads image headers; "csv:<path>" reads the file.
    """
    validate_dataset_name(name)
    if is_imagefolder(name):
        return imagefolder.info(name)
    if is_csv(name):
        texts, _, class_names = text.read_csv(name, text_column, label_column)
        return DatasetInfo(name, f"your text in {text.csv_path(name)}", CATALOGUE["rotten-tomatoes"].input_shape,
                           len(class_names), "text", True, len(texts))
    info = CATALOGUE[name]
    if name in files.LAYOUTS:
        present = files.find_folder(name, root or default_root()) is not None
        info = dataclasses.replace(info, offline=present)
    return info


def load_for(config) -> Splits:
    """The dataset of a RunConfig, with its text options (columns, and the teacher's tokenizer)."""
    return load_dataset(config.dataset, root=config.data_root, val_fraction=config.val_fraction,
                        text_column=config.text_column, label_column=config.label_column,
                        tokenizer=tokenizer_for(config.teacher.arch))


def tokenizer_for(teacher_arch: str) -> str:
    """The tokenizer a run's text is cut with: the teacher's (`hf:<id>`), else the bundled MiniLM's, which
    every built-in text model (teacher and students) reads."""
    from kdcore.model_names import hf_name

    return teacher_arch if hf_name(teacher_arch) is not None else text.DEFAULT_TOKENIZER


def load_dataset(name: str, *, root: str | None = None, val_fraction: float = 0.1, text_column: str = "text",
                 label_column: str = "label", tokenizer: str = text.DEFAULT_TOKENIZER) -> Splits:
    """Load dataset `name` as normalised, stratified train / validation / test tensors.

    Datasets with an official test split keep it and carve validation from their training
    part; the others hold out TEST_FRACTION as test, then `val_fraction` of the rest as
    validation. Splits depend only on the data, never on the run seed.
    Text (rotten-tomatoes, csv:<path>) comes as token ids int64 [N, MAX_TOKENS] (`kdcore.data.text`), cut by
    `tokenizer`; `text_column` and `label_column` name a CSV's columns.
    """
    validate_dataset_name(name)
    if not 0.0 < val_fraction <= 0.5:
        raise DatasetError(f"val_fraction must be in (0, 0.5], got {val_fraction}")
    if is_csv(name) or (name in CATALOGUE and CATALOGUE[name].kind == "text"):
        return _load_text(name, val_fraction, text_column, label_column, tokenizer)
    if is_imagefolder(name):
        info, raw = imagefolder.load(name)
    elif name in BUILTIN:
        info, raw = CATALOGUE[name], BUILTIN[name]()
    else:
        info, raw = CATALOGUE[name], files.load(name, root or default_root())
    train, val, test = _split(raw, val_fraction, name)
    (train_x, val_x, test_x), mean, std = _normalise(
        [_pixels(x, raw.scale) for x, _ in (train, val, test)])
    size = len(raw.y) + (0 if raw.test_y is None else len(raw.test_y))
    return Splits(
        info=dataclasses.replace(info, offline=True, size=size),
        train_x=train_x, train_y=torch.from_numpy(train[1]),
        val_x=val_x, val_y=torch.from_numpy(val[1]),
        test_x=test_x, test_y=torch.from_numpy(test[1]),
        class_names=list(raw.class_names), mean=mean, std=std,
    )


def check_text(config) -> None:
    """Refuse, before a run is recorded, a `csv:` dataset that cannot be read or split three ways, and an `hf:`
    teacher whose tokenizer cannot be had (offline and not downloaded). Reads the file; tokenizes nothing."""
    if is_csv(config.dataset):
        texts, labels, class_names = text.read_csv(config.dataset, config.text_column, config.label_column)
        rows = np.arange(len(labels))[:, None]
        _split(RawData(rows, labels, class_names), config.val_fraction, config.dataset)
    if config.teacher.arch.startswith("hf:"):
        text.vocab_size(config.teacher.arch)


def _load_text(name: str, val_fraction: float, text_column: str, label_column: str, tokenizer: str) -> Splits:
    if is_csv(name):
        texts, labels, class_names = text.read_csv(name, text_column, label_column)
        info = DatasetInfo(name, f"your text in {text.csv_path(name)}", (MAX_TOKENS, 1), len(class_names), "text",
                           True, len(texts))
    else:
        (texts, labels, class_names), info = text.rotten_tomatoes(), CATALOGUE[name]
    ids = text.tokenize(texts, tokenizer)
    rows = np.arange(len(ids), dtype=np.int64)[:, None]  # a last column of row numbers finds the texts after the split
    train, val, test = _split(RawData(np.hstack([ids, rows]), labels, class_names), val_fraction, name)
    info = dataclasses.replace(info, input_shape=(MAX_TOKENS, text.vocab_size(tokenizer)), offline=True,
                               size=len(labels))
    tensors = {f"{part}_{axis}": torch.from_numpy(np.ascontiguousarray(array[:, :-1] if axis == "x" else array))
               for part, xy in (("train", train), ("val", val), ("test", test)) for axis, array in zip("xy", xy)}
    return Splits(info=info, class_names=list(class_names), val_texts=[texts[row] for row in val[0][:, -1]],
                  tokenizer=tokenizer, **tensors)


Part = tuple[np.ndarray, np.ndarray]  # (x, y), freshly indexed copies


def _split(raw: RawData, val_fraction: float, name: str) -> tuple[Part, Part, Part]:
    everything = np.arange(len(raw.y))
    if raw.test_y is None:
        rest, test_rows = _stratified(everything, raw, TEST_FRACTION, name)
        test = (raw.x[test_rows], raw.y[test_rows])
    else:
        rest, test = everything, (np.array(raw.test_x), np.array(raw.test_y))
    train_rows, val_rows = _stratified(rest, raw, val_fraction, name)
    return (raw.x[train_rows], raw.y[train_rows]), (raw.x[val_rows], raw.y[val_rows]), test


def _stratified(rows: np.ndarray, raw: RawData, fraction: float,
                name: str) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` in two, keeping class proportions; the second part gets `fraction`.

    The split of scikit-learn's `train_test_split(rows, test_size=fraction, stratify=labels,
    random_state=SPLIT_SEED)` (its StratifiedShuffleSplit), written out with numpy: importing
    scikit-learn costs about a second at every worker start, and every run keeps the splits it had.
    """
    labels = raw.y[rows]
    n_test = math.ceil(fraction * len(rows))
    n_train = len(rows) - n_test
    classes, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2 or min(n_train, n_test) < len(classes):  # a class too small to appear on both sides
        counts_by_class = np.bincount(labels, minlength=len(raw.class_names))
        smallest = int(np.argmin(counts_by_class))
        raise DatasetError(
            f"{name}: too few examples for a stratified train/val/test split "
            f"(class {raw.class_names[smallest]!r} has {counts_by_class[smallest]} of {len(rows)}); "
            f"add examples or raise val_fraction")
    members = np.split(np.argsort(class_of, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(SPLIT_SEED)
    kept_per_class = _approximate_mode(counts, n_train, rng)
    held_per_class = _approximate_mode(counts - kept_per_class, n_test, rng)
    kept, held_out = [], []
    for i in range(len(classes)):
        shuffled = members[i].take(rng.permutation(counts[i]), mode="clip")
        kept.extend(shuffled[: kept_per_class[i]])
        held_out.extend(shuffled[kept_per_class[i] : kept_per_class[i] + held_per_class[i]])
    return rows[rng.permutation(kept)], rows[rng.permutation(held_out)]


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `n_draws` each class gets: proportional shares rounded down, then one more for the
    classes with the largest remainders, ties broken at random (scikit-learn's `_approximate_mode`)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _pixels(x: np.ndarray, scale: float) -> Tensor:
    return torch.from_numpy(x).to(torch.float32).div_(scale)


def _normalise(parts: list[Tensor]) -> tuple[list[Tensor], tuple[float, ...], tuple[float, ...]]:
    """Standardise every part per channel with the first (training) part's mean and std."""
    train = parts[0]
    dims = [0] + list(range(2, train.dim()))  # all but the channel / feature dimension
    mean = train.mean(dim=dims)
    std = train.std(dim=dims)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel stays put
    shape = [1, -1] + [1] * (train.dim() - 2)
    normalised = [part.sub_(mean.view(shape)).div_(std.view(shape)) for part in parts]
    return normalised, tuple(mean.tolist()), tuple(std.tolist())
