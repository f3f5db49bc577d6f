"""Datasets for KD Lab: load one by name as normalised train / validation / test tensors.

    splits = load_dataset("mnist-5k")
    batch = augment(splits.train_x[:128], splits.info, generator)

Names and their metadata live in `kdcore.dataset_names` (torch-free); this package loads pixels.
Modules: `splits` (the front door), `builtin` (bundled and generated sets), `files`
(torchvision-layout files), `imagefolder` (a user's own images), `augment`, `transfer` (labels the student
may not use, and extra unlabelled inputs).
"""

from kdcore.data.augment import apply_views, augment, random_views, view_count
from kdcore.data.splits import Splits, dataset_info, default_root, list_datasets, load_dataset, load_for, tokenizer_for
from kdcore.data.transfer import (check_labels, check_transfer_texts, labeled_rows, load_transfer, transfer_column,
                                  transfer_tag)
from kdcore.dataset_names import DATASET_NAMES, DatasetInfo, validate_dataset_name

__all__ = [
    "DATASET_NAMES",
    "DatasetInfo",
    "Splits",
    "apply_views",
    "augment",
    "check_labels",
    "check_transfer_texts",
    "labeled_rows",
    "load_transfer",
    "transfer_column",
    "transfer_tag",
    "random_views",
    "view_count",
    "dataset_info",
    "default_root",
    "list_datasets",
    "load_dataset",
    "load_for",
    "tokenizer_for",
    "validate_dataset_name",
]
