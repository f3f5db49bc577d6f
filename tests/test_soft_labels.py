"""Tests for kdcore.soft_labels: the teacher's outputs computed once and cached, and the snapshots the app draws.

Real (untrained, seeded) tiny MLP teachers on digits (8x8 images) and moons (2-D points); each check
compares with running the teacher directly, so no test needs to know how the outputs were stored.
(That inference runs in eval mode, batch-norm included, is kdcore.evaluation's test.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import references as ref
from kdcore import checkpoints
from kdcore.config import RunConfig
from kdcore.data import apply_views, load_dataset, random_views, view_count
from kdcore.models import build_model
from kdcore.soft_labels import GRID_SIZE, SNAPSHOT_SAMPLES, SoftLabels, snapshot_indices, student_snapshot, teacher_snapshot


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons")


def teacher(data, seed: int = 0, arch: str = "mlp-small") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, data.info.input_shape, data.info.num_classes).eval()


def config(dataset: str = "digits", **dotted) -> RunConfig:
    return RunConfig.from_dict({"dataset": dataset, "teacher": {"arch": "mlp-small"}, "student": {"arch": "mlp-tiny"}}
                               ).replace(**dotted)


@pytest.fixture(scope="module")
def digits_soft(digits):
    """A digits teacher and its soft labels with features, computed once for the module."""
    model = teacher(digits)
    return model, SoftLabels(model, digits, config(), need_features=True)


def run(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits, features, _ = model.eval().forward_features(x)
    return logits, features


# ---------------------------------------------------------------- computed once, indexed per step


def test_logits_and_features_are_the_teachers_and_batches_index_them(digits, digits_soft):
    model, soft = digits_soft
    train_logits, train_features = run(model, digits.train_x)
    torch.testing.assert_close(soft.train_logits, train_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(soft.train_features, train_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(soft.val_logits, run(model, digits.val_x)[0], rtol=1e-5, atol=1e-5)
    idx = torch.tensor([5, 0, 1000, 5])
    logits, features = soft.batch(idx, torch.zeros(4, 1, 8, 8))  # the batch's pixels are not looked at again
    assert torch.equal(logits, soft.train_logits[idx]) and torch.equal(features, soft.train_features[idx])


def test_without_features_a_batch_has_none(moons):
    soft = SoftLabels(teacher(moons), moons, config("moons"), need_features=False)
    assert soft.train_features is None
    assert soft.batch(torch.arange(3), moons.train_x[:3])[1] is None


def test_augmented_points_run_the_teacher_on_each_batch(moons):
    model = teacher(moons)
    soft = SoftLabels(model, moons, config("moons", augment=True), need_features=True)
    assert soft.train_logits is None and soft.view_table is None  # jitter is continuous: nothing to table
    x = moons.train_x[:7] + 0.3
    logits, features = soft.batch(torch.arange(7), x)
    expected_logits, expected_features = run(model, x)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(features, expected_features)


def test_augmented_images_look_up_a_table_of_every_view_kept_in_the_cache(digits, tmp_path):
    model = teacher(digits)
    views = view_count(digits.info)
    soft = SoftLabels(model, digits, config(augment=True, epochs=views), need_features=False, cache_stem=tmp_path / "key")
    assert soft.view_table.shape == (views, len(digits.train_x), 10) and soft.train_logits is None
    idx = torch.arange(0, 300, 7)
    chosen = random_views(len(idx), digits.info, torch.Generator().manual_seed(0))
    x = apply_views(digits.train_x[idx], digits.info, chosen)
    logits, _ = soft.batch(idx, x, chosen)
    torch.testing.assert_close(logits, run(model, x)[0], rtol=1e-4, atol=1e-4)
    again = SoftLabels(model, digits, config(augment=True, epochs=1), need_features=False, cache_stem=tmp_path / "key")
    assert again.view_table is not None and torch.equal(again.view_table, soft.view_table)  # cached: used for 1 epoch too


def test_a_short_augmented_run_does_not_build_the_table(digits):
    model = teacher(digits)
    soft = SoftLabels(model, digits, config(augment=True, epochs=1), need_features=False)
    assert soft.view_table is None and soft.train_logits is None  # 9 views cost more than 1 epoch of steps
    x = apply_views(digits.train_x[:5], digits.info, torch.tensor([0, 1, 2, 3, 4]))
    torch.testing.assert_close(soft.batch(torch.arange(5), x, torch.tensor([0, 1, 2, 3, 4]))[0], run(model, x)[0])


# ---------------------------------------------------------------- the cache beside the teacher


def test_a_second_build_reads_the_cache_instead_of_running_the_teacher(digits, tmp_path):
    stem = tmp_path / "teacher-key"
    first = SoftLabels(teacher(digits, seed=0), digits, config(), need_features=True, cache_stem=stem)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "teacher-key.train_features.pt", "teacher-key.train_logits.pt", "teacher-key.val_logits.pt"]
    other_teacher = teacher(digits, seed=1)  # other weights: recomputing would give other logits
    second = SoftLabels(other_teacher, digits, config(), need_features=True, cache_stem=stem)
    assert torch.equal(second.train_logits, first.train_logits) and torch.equal(second.val_logits, first.val_logits)
    assert torch.equal(second.train_features, first.train_features)
    assert not torch.allclose(run(other_teacher, digits.val_x)[0], first.val_logits)


@pytest.mark.parametrize("damage", ["garbage", "old version", "other shape"])
def test_a_damaged_or_foreign_cache_entry_is_recomputed_and_replaced(digits, tmp_path, damage):
    stem = tmp_path / "key"
    path = tmp_path / "key.val_logits.pt"
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        version, rows = (0, len(digits.val_x)) if damage == "old version" else (1, len(digits.val_x) + 1)
        checkpoints.save_atomic({"version": version, "tensor": torch.zeros(rows, 10)}, path)
    model = teacher(digits)
    soft = SoftLabels(model, digits, config(), need_features=False, cache_stem=stem)
    expected = run(model, digits.val_x)[0]
    torch.testing.assert_close(soft.val_logits, expected, rtol=1e-5, atol=1e-5)
    stored = checkpoints.load(path)
    assert stored["version"] == 1 and torch.equal(stored["tensor"], soft.val_logits)


# ---------------------------------------------------------------- snapshots


def test_snapshot_indices_by_hand():
    labels = torch.tensor([2, 2, 0, 1, 0, 2])
    assert snapshot_indices(labels, 2) == [0, 2]  # the first example of each class, in order of appearance
    assert snapshot_indices(labels, 3) == [0, 2, 3]
    assert snapshot_indices(labels, 5) == [0, 2, 3, 1, 4]  # then the earliest others
    assert snapshot_indices(labels, 10) == [0, 2, 3, 1, 4, 5]


def test_snapshot_indices_pick_one_per_class_on_real_labels(digits):
    chosen = snapshot_indices(digits.val_y, SNAPSHOT_SAMPLES)
    assert chosen == snapshot_indices(digits.val_y.clone(), SNAPSHOT_SAMPLES)
    assert sorted(digits.val_y[chosen].tolist()) == list(range(10))
    assert all(int(digits.val_y[i]) not in digits.val_y[:i].tolist() for i in chosen)


def test_teacher_snapshot_of_an_image_set(digits, digits_soft):
    _, soft = digits_soft
    payload = json.loads(json.dumps(teacher_snapshot(digits, soft, 4.0)))  # it goes to the store as JSON
    idx = snapshot_indices(digits.val_y, SNAPSHOT_SAMPLES)
    assert payload["indices"] == idx and payload["labels"] == digits.val_y[idx].tolist()
    assert payload["class_names"] == list(digits.class_names) and payload["temperature"] == 4.0
    np.testing.assert_allclose(payload["teacher_T"], ref.softmax(soft.val_logits[idx], 4.0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(payload["teacher_T1"], ref.softmax(soft.val_logits[idx]), rtol=1e-5, atol=1e-7)
    images = np.array(payload["images"])
    assert images.shape == (SNAPSHOT_SAMPLES, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    pixels = digits.val_x[idx] * torch.tensor(digits.std).view(1, -1, 1, 1) + torch.tensor(digits.mean).view(1, -1, 1, 1)
    np.testing.assert_allclose(images, pixels.clamp(0, 1).numpy(), atol=1e-6)
    assert "grid" not in payload and "points" not in payload


def test_snapshots_of_a_point_set_draw_decision_regions(moons):
    model = teacher(moons)
    soft = SoftLabels(model, moons, config("moons"), need_features=False)
    payload = json.loads(json.dumps(teacher_snapshot(moons, soft, 2.0)))
    assert "images" not in payload
    assert payload["points"] == moons.val_x[:600].tolist() and payload["point_labels"] == moons.val_y[:600].tolist()
    idx = snapshot_indices(moons.val_y, SNAPSHOT_SAMPLES)
    assert payload["highlight"] == moons.val_x[idx].tolist()
    xs, ys = np.array(payload["grid"]["x"]), np.array(payload["grid"]["y"])
    assert len(xs) == len(ys) == GRID_SIZE
    low, high = moons.val_x.min(0).values.numpy(), moons.val_x.max(0).values.numpy()
    np.testing.assert_allclose([xs[0], ys[0], xs[-1], ys[-1]], [low[0] - 0.5, low[1] - 0.5, high[0] + 0.5, high[1] + 0.5],
                               rtol=1e-6)
    regions = np.array(payload["teacher_regions"])
    assert regions.shape == (GRID_SIZE, GRID_SIZE)  # rows follow y, columns follow x
    for row, column in [(0, 0), (GRID_SIZE - 1, 3), (17, GRID_SIZE - 1), (30, 30)]:
        point = torch.tensor([[xs[column], ys[row]]], dtype=torch.float32)
        assert regions[row, column] == int(run(model, point)[0].argmax())

    student = teacher(moons, seed=5, arch="mlp-tiny")
    mine = json.loads(json.dumps(student_snapshot(student, moons, soft, 2.0)))
    assert mine["indices"] == idx
    np.testing.assert_allclose(mine["student_T"], ref.softmax(run(student, moons.val_x[idx])[0], 2.0), rtol=1e-5, atol=1e-7)
    assert np.array(mine["student_regions"]).shape == (GRID_SIZE, GRID_SIZE)


def test_student_snapshot_of_an_image_set_has_no_regions(digits, digits_soft):
    _, soft = digits_soft
    student = teacher(digits, seed=3, arch="mlp-tiny").train()
    mine = student_snapshot(student, digits, soft, 4.0)
    assert set(mine) == {"indices", "student_T"} and student.training  # left in the mode it was in
    np.testing.assert_allclose(mine["student_T"], ref.softmax(run(student, digits.val_x[mine["indices"]])[0], 4.0),
                               rtol=1e-5, atol=1e-7)
