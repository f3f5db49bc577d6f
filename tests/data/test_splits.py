"""Tests for kdcore.data.splits: loading a dataset by name into normalised, stratified train / validation /
test splits, and listing datasets without loading them."""

from __future__ import annotations

import pytest
import torch

from data_helpers import FILE_NAMES, TOY_NAMES, all_parts, write_cifar10, write_idx_set
from kdcore.data import DATASET_NAMES, DatasetInfo, builtin, dataset_info, default_root, list_datasets, load_dataset
from kdcore.errors import DatasetError


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
        assert isinstance(info, DatasetInfo) and info.kind in ("image", "points", "text")
        assert info.offline == (info.name not in FILE_NAMES)
    assert {info.name: info.kind for info in infos}["rotten-tomatoes"] == "text"
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


# ---------------------------------------------------------------- splits


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


@pytest.mark.parametrize("val_fraction", [0.0, -0.1, 0.51, 1.0])
def test_val_fraction_out_of_range(val_fraction):
    with pytest.raises(DatasetError, match="val_fraction"):
        load_dataset("digits", val_fraction=val_fraction)


def test_val_fraction_sets_validation_size():
    splits = load_dataset("digits", val_fraction=0.5)
    assert len(splits.val_y) == pytest.approx(len(splits.train_y), abs=1)


def test_splits_to_moves_every_tensor():
    moved = load_dataset("moons").to("meta")
    for x, y in all_parts(moved):
        assert x.device.type == "meta" and y.device.type == "meta"
    assert moved.class_names == ["upper moon", "lower moon"]


# ---------------------------------------------------------------- the split itself


def test_the_stratified_split_is_scikit_learns_without_importing_it():
    """The numpy split gives exactly `train_test_split(..., stratify=..., random_state=0)`: every run keeps the
    splits (and so the cached and bundled teachers) it had, and a worker no longer imports scikit-learn."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from kdcore.data.raw import RawData
    from kdcore.data.splits import BUILTIN, SPLIT_SEED, _stratified

    rng = np.random.default_rng(1)
    cases = [(load(), np.arange(len(load().y))) for load in BUILTIN.values()]
    for _ in range(50):  # unbalanced random label sets, rows a shuffled subset
        classes = int(rng.integers(2, 12))
        labels = np.concatenate([np.repeat(np.arange(classes), 3), rng.integers(0, classes, int(rng.integers(10, 300)))])
        cases.append((RawData(np.zeros((len(labels), 1)), labels, tuple(map(str, range(classes)))),
                      rng.permutation(len(labels))))
    for raw, rows in cases:
        for fraction in (0.1, 0.2, 0.37):
            try:
                expected = train_test_split(rows, test_size=fraction, stratify=raw.y[rows], random_state=SPLIT_SEED)
            except ValueError:  # too few of a class: refused by both
                with pytest.raises(DatasetError, match="too few examples for a stratified"):
                    _stratified(rows, raw, fraction, "toy")
                continue
            assert all(np.array_equal(a, b) for a, b in zip(expected, _stratified(rows, raw, fraction, "toy")))
