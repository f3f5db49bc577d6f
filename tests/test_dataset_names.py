"""Tests for kdcore.dataset_names: the catalogue of datasets and name checks, without loading any pixels.

That this module never imports torch is checked in tests/test_imports.py; loading is tests/data/.
"""

from __future__ import annotations

import pytest

from kdcore.dataset_names import (CATALOGUE, DATASET_NAMES, DEFAULT_VOCAB, MAX_TOKENS, TOY_SIZE, is_imagefolder,
                                  validate_dataset_name)
from kdcore.errors import DatasetError

BUNDLED_OR_GENERATED = {"mnist-5k", "digits", "moons", "circles", "blobs", "spirals", "rotten-tomatoes"}


@pytest.mark.parametrize("name", DATASET_NAMES + ("imagefolder:/some/where", "imagefolder:relative/pets"))
def test_known_names_and_image_folders_are_accepted(name):
    validate_dataset_name(name)


def test_an_unknown_name_lists_every_valid_one_in_one_line():
    with pytest.raises(DatasetError) as error:
        validate_dataset_name("mnist-6k")
    message = str(error.value)
    assert message == (f"unknown dataset 'mnist-6k'; choose one of {', '.join(DATASET_NAMES)}, "
                       "imagefolder:<path> for your own images, or csv:<path> for your own text")


@pytest.mark.parametrize("name", ["imagefolder:", "imagefolder:   "])
def test_an_image_folder_needs_a_path(name):
    with pytest.raises(DatasetError, match="^imagefolder: needs a path, e.g. imagefolder:/home/me/pets$"):
        validate_dataset_name(name)


def test_is_imagefolder():
    assert is_imagefolder("imagefolder:/x") and not is_imagefolder("mnist") and not is_imagefolder("/x/imagefolder:")


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_catalogue_entries_are_consistent(name):
    info = CATALOGUE[name]
    assert info.name == name and info.description and info.num_classes >= 2 and info.size > 0
    if info.kind == "points":
        assert info.input_shape == (2,) and info.size == TOY_SIZE
    elif info.kind == "text":  # (tokens, vocabulary) of the bundled MiniLM tokenizer
        assert info.input_shape == (MAX_TOKENS, DEFAULT_VOCAB)
    else:
        assert info.kind == "image" and len(info.input_shape) == 3 and info.input_shape[0] in (1, 3)
    assert info.offline == (name in BUNDLED_OR_GENERATED), "only sets that need no files are offline up front"
