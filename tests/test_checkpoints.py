"""Tests for kdcore.checkpoints: atomic writes, safe reads, and loads that refuse a model they do not fit."""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path

import pytest
import torch

from kdcore import checkpoints
from kdcore.errors import CheckpointError
from kdcore.models import build_model

SHAPE, CLASSES = (1, 8, 8), 10


def model(arch: str = "mlp-tiny", classes: int = CLASSES, shape=SHAPE, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, shape, classes)


def saved(path: Path, arch: str = "mlp-tiny", classes: int = CLASSES, shape=SHAPE, seed: int = 0, **extra) -> torch.nn.Module:
    net = model(arch, classes, shape, seed)
    checkpoints.save_atomic(checkpoints.model_checkpoint(net, arch=arch, input_shape=shape, num_classes=classes, **extra),
                            path)
    return net


def refused(path: Path, arch: str = "mlp-tiny", classes: int = CLASSES, shape=SHAPE) -> str:
    """The one-line CheckpointError that loading `path` into a fresh `arch` raises."""
    with pytest.raises(CheckpointError) as info:
        checkpoints.load_into(model(arch, classes, shape), path, arch=arch, input_shape=shape, num_classes=classes,
                              what="teacher.checkpoint")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------- save_atomic


def test_save_atomic_writes_a_readable_file_and_creates_its_folder(tmp_path):
    path = tmp_path / "deep" / "er" / "model.pt"
    checkpoints.save_atomic({"step": 3, "weights": torch.arange(4.0)}, path)
    stored = checkpoints.load(path)
    assert stored["step"] == 3 and torch.equal(stored["weights"], torch.arange(4.0))
    assert os.listdir(path.parent) == ["model.pt"]  # no temporary file left beside it


def test_save_atomic_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    checkpoints.save_atomic({"version": 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        checkpoints.save_atomic({"version": 2, "unpicklable": lambda: None}, path)
    assert os.listdir(tmp_path) == ["model.pt"]
    assert checkpoints.load(path) == {"version": 1}


# ---------------------------------------------------------------- load


def test_load_refuses_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"^teacher .*nope\.pt does not exist$"):
        checkpoints.load(tmp_path / "nope.pt", "teacher")


@pytest.mark.parametrize("content", [random.Random(0).randbytes(4096), b"", b"PK\x03\x04 truncated zip"],
                         ids=["random-bytes", "empty", "truncated-zip"])
def test_load_refuses_a_corrupt_file_in_one_line(tmp_path, content):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot be read \\(corrupt or not a PyTorch checkpoint\\)") as info:
        checkpoints.load(path)
    assert "\n" not in str(info.value)


def test_load_refuses_what_is_not_a_dict(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
        checkpoints.load(path)


class Payload:  # a pickled object of a class the safe loader must not import
    pass


def test_load_refuses_arbitrary_pickled_objects(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        checkpoints.load(path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- load_into


def test_a_kdcore_checkpoint_rebuilds_its_model_with_its_extras(tmp_path):
    path = tmp_path / "teacher.pt"
    original = saved(path, config={"temperature": 4.0}, epoch=7)
    fresh = model(seed=1)
    assert not same_weights(fresh, original)
    stored = checkpoints.load_into(fresh, path, arch="mlp-tiny", input_shape=SHAPE, num_classes=CLASSES, what="teacher")
    assert same_weights(fresh, original)
    assert stored["format"] == checkpoints.FORMAT and stored["arch"] == "mlp-tiny"
    assert stored["input_shape"] == list(SHAPE) and stored["num_classes"] == CLASSES
    assert stored["config"] == {"temperature": 4.0} and stored["epoch"] == 7


def test_a_bare_state_dict_is_accepted(tmp_path):
    path = tmp_path / "bare.pt"
    original = model(seed=2)
    torch.save(original.state_dict(), path)
    fresh = model(seed=3)
    checkpoints.load_into(fresh, path, arch="mlp-tiny", input_shape=SHAPE, num_classes=CLASSES, what="teacher")
    assert same_weights(fresh, original)


def test_another_architecture_is_refused(tmp_path):
    saved(tmp_path / "t.pt", arch="cnn-small")
    message = refused(tmp_path / "t.pt")
    assert "was trained as 'cnn-small', not 'mlp-tiny'" in message and message.endswith("cnn-small")


def test_another_class_count_is_refused(tmp_path):
    saved(tmp_path / "t.pt", classes=3)
    assert "has 3 classes; the dataset has 10" in refused(tmp_path / "t.pt")


def test_another_input_shape_is_refused(tmp_path):
    saved(tmp_path / "t.pt", shape=(1, 28, 28))
    assert "was trained on inputs of shape (1, 28, 28); the dataset's are (1, 8, 8)" in refused(tmp_path / "t.pt")


def test_a_bare_state_dict_of_another_model_is_refused_by_key(tmp_path):
    torch.save(model("cnn-small").state_dict(), tmp_path / "bare.pt")
    message = refused(tmp_path / "bare.pt")
    assert re.search(r"does not match mlp-tiny: missing hidden\.0\.bias \(\+1 more\), unexpected \S+ \(\+\d+ more\)$",
                     message), message


def test_a_bare_state_dict_of_other_widths_is_refused_by_shape(tmp_path):
    torch.save(model("mlp:32").state_dict(), tmp_path / "bare.pt")
    assert "hidden.0.weight is [32, 64] in the file, [16, 64] in the model" in refused(tmp_path / "bare.pt")


def test_a_dict_that_is_neither_is_refused(tmp_path):
    torch.save({"epoch": 3, "note": "not weights"}, tmp_path / "other.pt")
    assert "is neither a kdcore checkpoint nor a state dict" in refused(tmp_path / "other.pt")


def test_a_refused_load_leaves_the_model_unchanged(tmp_path):
    torch.save(model("mlp:32", seed=4).state_dict(), tmp_path / "bare.pt")  # head.bias alone would fit
    net, before = model(), model()
    with pytest.raises(CheckpointError, match="does not match mlp-tiny with 10 classes"):
        checkpoints.load_into(net, tmp_path / "bare.pt", arch="mlp-tiny", input_shape=SHAPE, num_classes=CLASSES,
                              what="teacher")
    assert same_weights(net, before)
