"""Tests for kdcore.temperature: the Temperature lab's numbers, against float64 references and values by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import references as ref
from kdcore import checkpoints
from kdcore.config import RunConfig
from kdcore.data import load_dataset
from kdcore.errors import CheckpointError
from kdcore.models import build_model
from kdcore.temperature import (class_similarity, dark_knowledge_curve, entropy, entropy_curve, teacher_file,
                                teacher_logits)

TEMPERATURES = [0.5, 1, 2, 4, 8, 16, 32]


def logits(rows: int = 200, classes: int = 10, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, scale, (rows, classes))).float()


# ---------------------------------------------------------------- curves


def test_entropy_curve_matches_the_float64_reference():
    z = logits()
    expected = [float(ref.entropy(ref.softmax(z, t)).mean()) for t in TEMPERATURES]
    np.testing.assert_allclose(entropy_curve(z, TEMPERATURES), expected, rtol=1e-5)


def test_entropy_rises_with_temperature_towards_log_classes():
    curve = entropy_curve(logits(), TEMPERATURES)
    assert all(b > a for a, b in zip(curve, curve[1:]))
    assert curve[-1] < math.log(10) and entropy_curve(logits(), [1e6])[0] == pytest.approx(math.log(10), abs=1e-6)


def test_entropy_of_a_one_hot_row_is_zero_not_nan():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    assert entropy(probs).tolist() == pytest.approx([0.0, math.log(2)])


def test_dark_knowledge_by_hand():
    z = torch.tensor([[math.log(3.0), 0.0]])  # softmax at T=1: [3/4, 1/4]
    assert dark_knowledge_curve(z, [1.0]) == pytest.approx([0.25])
    assert dark_knowledge_curve(z, [1e6]) == pytest.approx([0.5], abs=1e-6)  # uniform over 2 classes
    assert dark_knowledge_curve(torch.zeros(3, 4), [0.5, 7.0]) == pytest.approx([0.75, 0.75])


def test_dark_knowledge_grows_with_temperature():
    curve = dark_knowledge_curve(logits(), TEMPERATURES)
    assert all(b > a for a, b in zip(curve, curve[1:])) and 0 <= curve[0] and curve[-1] < 0.9


# ---------------------------------------------------------------- class similarity


def test_class_similarity_by_hand():
    z = torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    similarity = class_similarity(z, labels, 1.0, 3)
    p = ref.softmax(z)
    row0 = (p[0] + p[1]) / 2  # mean over the two examples of class 0, then the diagonal removed
    np.testing.assert_allclose(similarity[0].numpy(), [0.0, row0[1] / (row0[1] + row0[2]), row0[2] / (row0[1] + row0[2])],
                               rtol=1e-6)
    np.testing.assert_allclose(similarity[1].numpy(), [p[2, 0] / (p[2, 0] + p[2, 2]), 0.0, 0.5], rtol=1e-6)
    assert similarity[2].sum() == 0  # no example of class 2


def test_class_similarity_rows_are_distributions_over_the_wrong_classes():
    z, labels = logits(), torch.arange(200) % 10
    similarity = class_similarity(z, labels, 4.0, 10)
    assert similarity.shape == (10, 10) and torch.all(similarity.diagonal() == 0)
    torch.testing.assert_close(similarity.sum(1), torch.ones(10))


# ---------------------------------------------------------------- a teacher's logits from its checkpoint


def save_teacher(config: RunConfig, folder) -> torch.nn.Module:
    """An (untrained) teacher of `config`, saved where the teacher cache keeps it."""
    data = load_dataset(config.dataset)
    torch.manual_seed(0)
    model = build_model(config.teacher.arch, data.info.input_shape, data.info.num_classes)
    checkpoints.save_atomic(checkpoints.model_checkpoint(model, arch=config.teacher.arch, input_shape=data.info.input_shape,
                                                         num_classes=data.info.num_classes),
                            folder / f"{config.teacher_key()}.pt")
    return model.eval()


def test_teacher_logits_of_an_image_set(tmp_path):
    config = RunConfig.from_dict({"dataset": "digits", "teacher": {"arch": "cnn-small"}, "student": {"arch": "mlp-tiny"}})
    model = save_teacher(config, tmp_path)
    found = teacher_logits(config, teacher_file(tmp_path, config))
    data = load_dataset("digits")
    with torch.no_grad():
        torch.testing.assert_close(found.logits, model(data.val_x), rtol=1e-5, atol=1e-5)
    assert torch.equal(found.labels, data.val_y) and found.class_names == list(data.class_names)
    assert found.points is None and found.images.shape == (len(data.val_x), 1, 8, 8)
    assert 0 <= float(found.images.min()) and float(found.images.max()) <= 1
    pixels = data.val_x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    torch.testing.assert_close(found.images, pixels.clamp(0, 1))


def test_teacher_logits_of_a_point_set(tmp_path):
    config = RunConfig.from_dict({"dataset": "moons", "teacher": {"arch": "mlp-small"}, "student": {"arch": "mlp-tiny"}})
    save_teacher(config, tmp_path)
    found = teacher_logits(config, teacher_file(tmp_path, config))
    data = load_dataset("moons")
    assert found.logits.shape == (len(data.val_x), 2) and found.images is None
    assert torch.equal(found.points, data.val_x)


def test_teacher_file_is_the_checkpoint_or_the_cached_teacher(tmp_path):
    config = RunConfig.from_dict({"dataset": "digits", "student": {"arch": "mlp-tiny"}})
    with pytest.raises(CheckpointError, match="not in the cache"):
        teacher_file(tmp_path, config)
    save_teacher(config, tmp_path)
    assert teacher_file(tmp_path, config) == tmp_path / f"{config.teacher_key()}.pt"
    given = config.replace(**{"teacher.checkpoint": str(tmp_path / "mine.pt")})
    assert teacher_file(tmp_path, given) == tmp_path / "mine.pt"
