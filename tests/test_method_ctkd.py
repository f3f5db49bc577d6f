"""Curriculum temperature KD (kdcore/methods/ctkd.py): the curriculum, gradient reversal, the learned T, a run."""

from __future__ import annotations

import pytest
import torch

import references as ref
from kdcore import losses
from kdcore.config import build_config
from kdcore.errors import ConfigError
from kdcore.methods import resolve_params
from kdcore.methods.ctkd import curriculum_lambda
from run_helpers import run_and_metrics
from test_methods import build, step


def test_the_curriculum_rises_from_lambda_min_to_lambda_max_as_a_cosine():
    params = resolve_params("ctkd")
    assert curriculum_lambda(0, params) == pytest.approx(0.0, abs=1e-12)
    assert curriculum_lambda(5, params) == pytest.approx(0.5)
    assert curriculum_lambda(10, params) == pytest.approx(1.0) and curriculum_lambda(40, params) == pytest.approx(1.0)
    assert curriculum_lambda(2.5, params) == pytest.approx(0.5 * (1 - 0.5 ** 0.5))  # ½(1 + cos(5π/4))


def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = losses.reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 5.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.6, -1.5]))


def test_kd_term_uses_the_learned_temperature():
    config, student, teacher, objective = build("ctkd", "mlp-tiny", "mlp-small", ["weights.ce=0", "weights.kd=1"])
    x, y = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(5)
    parts = step(config, objective, student, x, y)
    t = float(parts["temperature"])
    assert t == pytest.approx(1 + 20 * torch.sigmoid(torch.tensor(1.0)).item(), rel=1e-6)  # θ starts at 1, as the paper
    assert ref.close(parts["kd"], ref.kd_loss(student(x), teacher(x), t), rtol=1e-3)  # float32 KL at T ≈ 16


def test_the_temperature_ascends_the_kd_loss_that_the_student_descends():
    config, student, teacher, objective = build("ctkd", "mlp-tiny", "mlp-small",
                                                ["weights.ce=0", "weights.kd=1", "method.lambda_min=1"])
    x, y = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.arange(8)
    theta = objective.modules.theta
    parts = step(config, objective, student, x, y, epoch=20)  # past the curriculum: λ = λ_max = 1
    parts["loss"].backward()
    t = theta.detach().clone().requires_grad_()
    temperature = 1 + 20 * torch.sigmoid(t)
    kd = (losses.kd_loss_per_sample(student(x).detach(), teacher(x), temperature) * temperature**2).mean()
    (true_grad,) = torch.autograd.grad(kd, t)
    assert torch.allclose(theta.grad, -true_grad, rtol=1e-4)  # an optimizer step on θ moves it up the KD loss


def test_instance_temperatures_are_per_example_and_in_range():
    config, student, _, objective = build("ctkd", "mlp-tiny", "mlp-small", ["method.instance=1", "method.t_range=4"])
    x, y = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.arange(6)
    parts = step(config, objective, student, x, y, epoch=20)  # λ = 1 (at epoch 1 it is 0: no gradient yet)
    parts["loss"].backward()
    assert 1.0 < float(parts["temperature"]) < 5.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.modules.parameters())


def test_without_a_kd_term_there_is_nothing_to_learn_a_temperature_from():
    with pytest.raises(ConfigError, match="^method ctkd learns its temperature through the KD term; weights.kd must be > 0$"):
        build_config(None, ["method=ctkd", "weights.kd=0", "weights.ce=1"])


def test_a_one_epoch_cli_run_records_the_learned_temperature(tmp_path):
    summary, series = run_and_metrics(tmp_path, "method=ctkd")
    temperatures = series["train_temperature"]
    assert len(temperatures) == len(series["train_loss"]) > 0
    assert all(1.0 < t < 21.0 for t in temperatures) and summary["status"] == "done"
