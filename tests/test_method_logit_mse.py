"""Logit matching (kdcore/methods/logit_mse.py): the student regresses the teacher's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import references as ref
from kdcore import losses
from kdcore.methods import METHODS
from run_helpers import run_and_metrics
from test_methods import build, step

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, scale, shape)).float()


def test_logit_mse_matches_the_float64_formula():
    student, teacher = rand(6, 3, seed=1, scale=4), rand(6, 3, seed=2, scale=4)
    by_hand = sum((float(s) - float(t)) ** 2 for s, t in zip(student.flatten(), teacher.flatten())) / 18
    assert ref.close(losses.logit_mse(student, teacher), by_hand, rtol=1e-5)
    assert float(losses.logit_mse(teacher, teacher)) == 0.0
    # unlike KD, it sees a shift of every logit, which a softmax at any temperature ignores
    assert float(losses.logit_mse(teacher + 2.0, teacher)) == pytest.approx(4.0)
    assert float(losses.kd_loss(teacher + 2.0, teacher, 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_the_loss_is_ce_plus_the_weighted_logit_mse():
    config, student, teacher, objective = build("logit_mse", "mlp-tiny", "mlp-small",
                                                ["weights.ce=0.3", "method.weight=2"])
    x, y = rand(5, 1, 8, 8, seed=3), torch.arange(5)
    parts = step(config, objective, student, x, y)
    assert set(parts) == {"loss", "ce", "logit_mse"}  # no KL term
    assert ref.close(parts["logit_mse"], ref.mse(student(x), teacher(x)), rtol=1e-5)
    expected = 0.3 * ref.cross_entropy(student(x), y) + 2 * ref.mse(student(x), teacher(x))
    assert ref.close(parts["loss"], expected, rtol=1e-5)
    assert METHODS["logit_mse"].weights_note() is not None  # the form says the KD weight is not used
    assert "z_s - z_t" in "".join(METHODS["logit_mse"].formula({"ce": 0.3, "kd": 0.7}, 4.0, {"weight": 2.0}))


def test_a_one_epoch_cli_run_records_the_logit_mse(tmp_path):
    summary, series = run_and_metrics(tmp_path, "method=logit_mse")
    assert summary["student_test_acc"] > 0.1
    assert len(series["train_logit_mse"]) == len(series["train_loss"]) > 0
    assert series["train_logit_mse"][-1] < series["train_logit_mse"][0]  # the student moves towards the teacher's logits
