"""Tests for kdcore.data.transfer: which training labels the student keeps, and extra unlabelled inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from kdcore.config import RunConfig
from kdcore.data import builtin, check_labels, labeled_rows, load_dataset, load_transfer, transfer_tag
from kdcore.dataset_names import labels_kept, unlabelled_classes_message
from kdcore.errors import DatasetError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
def test_labeled_rows_are_stratified_and_of_the_right_size(digits, fraction):
    rows = labeled_rows(digits.train_y, fraction, digits.class_names)
    labels = digits.train_y.numpy()
    kept = labels[rows.numpy()]
    for label in range(10):
        assert (kept == label).sum() == round(fraction * (labels == label).sum())
    assert len(set(rows.tolist())) == len(rows) and rows.tolist() == sorted(rows.tolist())


def test_labeled_rows_are_fixed_and_nested(digits):
    small, large = (labeled_rows(digits.train_y, f, digits.class_names) for f in (0.1, 0.3))
    assert torch.equal(small, labeled_rows(digits.train_y, 0.1, digits.class_names))  # no run seed involved
    assert set(small.tolist()) <= set(large.tolist())
    assert torch.equal(labeled_rows(digits.train_y, 1.0, digits.class_names), torch.arange(len(digits.train_y)))


def test_a_class_left_without_a_label_is_refused():
    labels = torch.tensor([0] * 40 + [1] * 3)  # 10% of 3 rounds to none
    with pytest.raises(DatasetError, match=r"^labeled_fraction 0\.1 leaves 1 class of toy without a labelled "
                                           r"example: 'b' \(3 training examples\); every class needs at least one: "
                                           r"raise labeled_fraction above 0\.167$"):
        labeled_rows(labels, 0.1, ("a", "b"), "toy")


def test_the_refusal_names_every_unlabelled_class_and_the_smallest_fraction_that_labels_them():
    sizes = [40, 3, 2, 5]  # round(0.1·n): 4, 0, 0, 0 (0.5 rounds to even); above 0.5/2 every class keeps one
    message = unlabelled_classes_message("toy", 0.1, ("a", "b", "c", "d"), sizes)
    assert message == ("labeled_fraction 0.1 leaves 3 classes of toy without a labelled example: 'b' (3 training "
                       "examples), 'c' (2 training examples), 'd' (5 training examples); every class needs at least "
                       "one: raise labeled_fraction above 0.25")
    assert unlabelled_classes_message("toy", 0.25, "abcd", sizes) is not None  # 0.25·2 = 0.5 rounds to 0
    assert unlabelled_classes_message("toy", 0.2501, "abcd", sizes) is None
    assert [labels_kept(n, 0.2501) for n in sizes] == [10, 1, 1, 1]
    assert unlabelled_classes_message("toy", 0.1, "ab", [40, 0]) is None  # an empty class needs no label


def test_a_catalogue_transfer_set_gives_its_inputs_normalised_like_the_dataset():
    moons = load_dataset("moons")
    extra = load_transfer("circles", moons)
    assert extra.shape == (3000, 2) and extra.dtype == torch.float32
    raw = extra * torch.tensor(moons.std) + torch.tensor(moons.mean)  # undo moons' normalisation
    assert torch.allclose(raw, torch.tensor(builtin.circles().x), atol=1e-5)  # circles' points, in order
    assert builtin.circles().x.flags.writeable is False and load_transfer("circles", moons).equal(extra)  # cache untouched


def write_loose_images(folder: Path) -> None:
    """Unlabelled images, no class folders: different sizes and modes, one nested, one non-image."""
    folder.mkdir(parents=True)
    Image.new("RGB", (30, 20), (255, 0, 0)).save(folder / "a.png")
    Image.new("L", (8, 8), 128).save(folder / "b.png")
    (folder / "more").mkdir()
    Image.new("L", (64, 64), 255).save(folder / "more" / "c.jpg")
    (folder / "readme.txt").write_text("not an image")


def test_an_image_folder_transfer_set_is_read_at_the_datasets_size_and_channels(tmp_path, digits):
    write_loose_images(tmp_path / "loose")
    extra = load_transfer(f"imagefolder:{tmp_path / 'loose'}", digits)
    assert extra.shape == (3, 1, 8, 8)
    pixels = extra * digits.std[0] + digits.mean[0]  # back to 0..1
    assert torch.allclose(pixels[1], torch.full((1, 8, 8), 128 / 255), atol=1e-5)
    assert torch.allclose(pixels[2], torch.ones(1, 8, 8), atol=1e-5)
    tag = transfer_tag(f"imagefolder:{tmp_path / 'loose'}", extra)
    assert tag.startswith("transfer-") and tag == transfer_tag(f"imagefolder:{tmp_path / 'loose'}", extra.clone())
    assert tag != transfer_tag(f"imagefolder:{tmp_path / 'loose'}", extra + 1)  # other images: labelled anew


def test_an_empty_or_missing_folder_is_refused(tmp_path, digits):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"^transfer: no images \(.*\) under .*empty$"):
        load_transfer(f"imagefolder:{tmp_path / 'empty'}", digits)
    with pytest.raises(DatasetError, match=r"^transfer: folder .*nowhere does not exist$"):
        load_transfer(f"imagefolder:{tmp_path / 'nowhere'}", digits)


def test_a_shape_known_only_when_the_dataset_is_read_is_refused_then(tmp_path):
    for label in ("cat", "dog"):  # an image folder dataset: 32x32, its shape unknown to the config
        for i in range(10):
            Image.new("L", (32, 32), 40 * i).save((tmp_path / label).mkdir(parents=True, exist_ok=True)
                                                  or tmp_path / label / f"{i}.png")
    config = RunConfig.from_dict(dict(dataset=f"imagefolder:{tmp_path}", teacher={"arch": "cnn"}, transfer="digits"))
    with pytest.raises(DatasetError, match=r"^transfer: digits gives inputs of shape \(1, 8, 8\); dataset "
                                           r"imagefolder:.* are \(1, 32, 32\)$"):
        check_labels(config)
