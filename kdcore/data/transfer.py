"""Labels the student may not use, and inputs that never had any: the data side of transfer sets.

    rows = labeled_rows(splits.train_y, 0.1, splits.class_names)      # a stratified 10% keeps its labels
    extra = load_transfer("fashion-mnist", splits)                      # [N, *input_shape], normalised like splits
    texts = load_transfer("csv:unlabelled.csv", text_splits, column="review")   # token ids [N, MAX_TOKENS]

Knowledge distillation needs no labels on the examples the teacher labels (Hinton et al. 2015 call
them the transfer set). `labeled_fraction` keeps the hard labels of a stratified share of the
training split; `transfer` adds the inputs of another dataset, or of a folder of images, with no
labels at all: for images another dataset of the same shape or a folder of images, for text a
`csv:<path>` (one column of texts; labels, if any, are ignored), the bundled rotten-tomatoes reviews, or
`augment:N` copies of the training sentences. The validation and test splits are never touched.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from kdcore.data import files
from kdcore.data.imagefolder import EXTENSIONS, folder_of
from kdcore.data.splits import BUILTIN, Splits, default_root
from kdcore.data.text_augment import augmented_copies, copies_of
from kdcore.dataset_names import CATALOGUE, is_csv, is_imagefolder, is_text, labels_kept, unlabelled_classes_message
from kdcore.errors import DatasetError

LABEL_SEED = 0  # fixed, not the run's seed: every run (and its baseline) of one fraction sees the same labels


def labeled_rows(train_y: Tensor, fraction: float, class_names: list[str] | tuple[str, ...],
                 dataset: str = "the dataset") -> Tensor:
    """Indices (sorted) of the training examples that keep their hard label: round(fraction · n_c) per class.

    Stratified, and nested: the examples of each class are ranked once by a fixed random permutation,
    so a smaller fraction keeps a subset of a larger one's labels. DatasetError when a class would keep none.
    """
    if fraction >= 1:
        return torch.arange(len(train_y))
    labels = train_y.cpu().numpy()
    sizes = np.bincount(labels, minlength=len(class_names)).tolist()
    problem = unlabelled_classes_message(dataset, fraction, class_names, sizes)
    if problem:
        raise DatasetError(problem)
    rank = np.random.default_rng(LABEL_SEED).permutation(len(labels))
    kept = []
    for label in range(len(class_names)):
        members = rank[labels[rank] == label]  # this class's rows, in the fixed random order
        kept.append(members[:labels_kept(len(members), fraction)])
    return torch.from_numpy(np.sort(np.concatenate(kept))).long()


def check_labels(config) -> None:
    """Refuse a run whose `labeled_fraction` leaves a class without a label, or whose transfer set does
    not fit the dataset, before it is queued (reads the data; the config's own checks read names only)."""
    from kdcore.data.splits import load_for

    if config.labeled_fraction >= 1 and config.transfer is None:
        return
    check_transfer_texts(config)  # before the dataset is read and tokenized: a missing file is found at once
    splits = load_for(config)
    labeled_rows(splits.train_y, config.labeled_fraction, splits.class_names, config.dataset)
    if config.transfer is not None:
        transfer_shape(config.transfer, splits, root=config.data_root, column=transfer_column(config))


def transfer_column(config) -> str:
    """The column a `csv:` transfer set's texts are read from: `transfer_column`, else the dataset's `text_column`."""
    return config.transfer_column or config.text_column


def check_transfer_texts(config) -> None:
    """Refuse (DatasetError, one line) a `csv:` transfer set that cannot be read: no such file, no such column,
    no texts in it. Reads the file alone (no dataset, no tokenizer): the New run form asks it too."""
    if config.transfer and is_csv(config.transfer):
        from kdcore.data.text import read_texts

        read_texts(config.transfer, transfer_column(config))


def transfer_shape(spec: str, splits: Splits, root: str | None = None, column: str = "text") -> tuple[int, ...]:
    """The input shape the transfer set `spec` gives, refused (DatasetError) unless it is the dataset's.
    `column`: the texts' column of a `csv:` transfer set (read here, so a bad one is refused)."""
    expected = tuple(splits.info.input_shape)
    if is_text(spec) or splits.info.kind == "text":
        if not is_text(spec) and copies_of(spec) is None:
            raise DatasetError(f"transfer: {spec} gives {'images' if is_imagefolder(spec) else 'inputs'} of shape "
                               f"{'(any)' if is_imagefolder(spec) else tuple(CATALOGUE[spec].input_shape)}; "
                               f"dataset {splits.info.name} is text")
        if is_text(spec) and splits.info.kind != "text":
            raise DatasetError(f"transfer: {spec} gives texts; dataset {splits.info.name} is not text")
        if is_csv(spec):
            from kdcore.data.text import read_texts

            read_texts(spec, column)
        return expected  # text is tokenized with the dataset's tokenizer, to the dataset's length
    if copies_of(spec) is not None:
        if splits.info.kind != "text":
            raise DatasetError(f"transfer: {spec} makes copies of text; dataset {splits.info.name} is not text")
        return expected
    if is_imagefolder(spec):
        if splits.info.kind != "image":
            raise DatasetError(f"transfer: {spec} gives images; dataset {splits.info.name} takes "
                               f"{expected[0]} features per example")
        return expected  # images are read at the dataset's size and channels
    shape = tuple(CATALOGUE[spec].input_shape)
    if shape != expected:
        raise DatasetError(f"transfer: {spec} gives inputs of shape {shape}; dataset {splits.info.name}'s are "
                           f"{expected}")
    return shape


def load_transfer(spec: str, splits: Splits, root: str | None = None, column: str = "text") -> Tensor:
    """The transfer set's inputs as float32 [N, *input_shape] on the CPU, normalised with `splits`' statistics
    (for text: token ids int64 [N, MAX_TOKENS], cut by the dataset's tokenizer).

    `augment:N` gives N masked or cut copies of every training sentence (`kdcore.data.text_augment`).
    `csv:<path>` gives the texts of its column `column` (blank cells left out; every other column ignored);
    `rotten-tomatoes` gives its 12,751 reviews, labels dropped.

    A catalogue dataset gives its training inputs (its official test split, where it has one, is left
    out; labels are dropped). `imagefolder:<path>` gives every image under the folder (subfolders
    included, their names ignored), converted to the dataset's channels and resized to its side.
    """
    transfer_shape(spec, splits, root, column)
    if is_text(spec):
        from kdcore.data import text

        texts = text.read_texts(spec, column) if is_csv(spec) else text.rotten_tomatoes()[0]
        return torch.from_numpy(text.tokenize(texts, splits.tokenizer or text.DEFAULT_TOKENIZER))
    copies = copies_of(spec)
    if copies is not None:
        from kdcore.data.text import special_tokens

        mask_id, specials = special_tokens(splits.tokenizer)
        return torch.from_numpy(augmented_copies(splits.train_x.cpu().numpy(), copies, mask_id, specials))
    if is_imagefolder(spec):
        pixels, scale = _folder_pixels(spec, splits.info.input_shape), 255.0
    else:
        raw = BUILTIN[spec]() if spec in BUILTIN else files.load(spec, root or default_root())
        pixels, scale = raw.x, raw.scale
    x = torch.tensor(pixels, dtype=torch.float32).div_(scale)  # a copy: `raw` is cached for the process, read-only
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = torch.tensor(splits.mean, dtype=torch.float32).view(shape)
    std = torch.tensor(splits.std, dtype=torch.float32).view(shape)
    return x.sub_(mean).div_(std)


def _folder_pixels(spec: str, input_shape: tuple[int, ...]) -> np.ndarray:
    """Every image under the folder as uint8 [N, C, H, W] at the dataset's channels and size."""
    from PIL import Image

    folder = folder_of(spec)
    if not os.path.isdir(folder):
        raise DatasetError(f"transfer: folder {folder} does not exist")
    paths = []
    for directory, subdirectories, file_names in os.walk(folder):
        subdirectories.sort()  # a deterministic order: the cached teacher logits follow it
        paths += [os.path.join(directory, name) for name in sorted(file_names) if name.lower().endswith(EXTENSIONS)]
    if not paths:
        raise DatasetError(f"transfer: no images ({', '.join(EXTENSIONS)}) under {folder}")
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise DatasetError(f"transfer: images can be read as 1 or 3 channels, the dataset has {channels}")
    mode = "L" if channels == 1 else "RGB"
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)))
        except OSError as exc:
            raise DatasetError(f"transfer: cannot read image {path}: {exc}") from None
    pixels = np.stack(images)
    return pixels[:, None] if channels == 1 else pixels.transpose(0, 3, 1, 2)


def transfer_tag(spec: str, x: Tensor) -> str:
    """The name the teacher's outputs on these transfer inputs are cached under, beside the teacher:
    the spec and a hash of the inputs themselves (a folder whose images changed is labelled anew)."""
    import hashlib

    digest = hashlib.blake2b(spec.encode(), digest_size=8)
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    return f"transfer-{digest.hexdigest()}"
