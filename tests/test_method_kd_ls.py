"""KD with logit standardisation (kdcore/methods/kd_ls.py, and the `standardize` option of kd, dkd, ctkd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import references as ref
from kdcore import losses
from kdcore.config import build_config
from kdcore.methods import METHODS
from run_helpers import run_and_metrics
from test_methods import build, step

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, scale, shape)).float()


def test_standardize_matches_the_float64_reference():
    z = rand(6, 10, seed=1, scale=7)
    assert np.allclose(losses.standardize_logits(z).double().numpy(), ref.standardize(z), atol=1e-5)
    out = losses.standardize_logits(z)
    assert torch.allclose(out.mean(1), torch.zeros(6), atol=1e-5) and torch.allclose(out.std(1), torch.ones(6), atol=1e-4)


def test_kd_ls_loss_is_kd_on_z_scored_logits():
    config, student, teacher, objective = build("kd_ls", "mlp-tiny", "mlp-small", ["weights.ce=0", "weights.kd=1"])
    x, y = rand(5, 1, 8, 8, seed=2), torch.arange(5)
    parts = step(config, objective, student, x, y)
    expected = ref.kd_loss(ref.standardize(student(x)), ref.standardize(teacher(x)), config.temperature)
    assert ref.close(parts["kd"], expected, rtol=1e-4) and ref.close(parts["loss"], expected, rtol=1e-4)


def test_standardised_kd_ignores_the_teachers_shift_and_scale():
    student, teacher = rand(4, 10, seed=3), rand(4, 10, seed=4)
    plain = losses.kd_loss(losses.standardize_logits(student), losses.standardize_logits(teacher), 4.0)
    moved = losses.kd_loss(losses.standardize_logits(student), losses.standardize_logits(3.0 * teacher + 5.0), 4.0)
    assert torch.allclose(plain, moved, atol=1e-5)
    assert not torch.allclose(losses.kd_loss(student, teacher, 4.0), losses.kd_loss(student, 3.0 * teacher, 4.0))


def test_standardize_is_an_option_of_the_logit_methods_where_the_paper_applies_it():
    assert {name for name, m in METHODS.items() if "standardize" in m.spec.params} == {"kd", "kd_ls", "dkd", "ctkd"}
    assert METHODS["kd_ls"].spec.params["standardize"].default == 1
    on = build("kd", "mlp-tiny", "mlp-small", ["method.standardize=1"])
    x, y = rand(4, 1, 8, 8, seed=5), torch.arange(4)
    ls = build("kd_ls", "mlp-tiny", "mlp-small")
    assert torch.allclose(step(on[0], on[3], on[1], x, y)["loss"], step(ls[0], ls[3], ls[1], x, y)["loss"])
    assert build_config(None, ["method=dkd", "method.standardize=1"]).method_params == {"standardize": 1}


def test_a_one_epoch_cli_run_finishes(tmp_path):
    summary, series = run_and_metrics(tmp_path, "method=kd_ls")
    assert summary["student_test_acc"] > 0.1 and len(series["train_kd"]) == len(series["train_loss"]) > 0
