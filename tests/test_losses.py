"""Tests for kdcore.losses against the independent float64 references of tests/references.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import references as ref
from kdcore.losses import distillation_loss, hint_loss, kd_loss, kd_loss_per_sample, soft_targets

TEMPERATURES = (0.5, 1.0, 4.0, 20.0)


# ---------------------------------------------------------------- inputs


def logits(batch: int, classes: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, scale, (batch, classes))).float()


# ---------------------------------------------------------------- kd_loss


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("batch", [1, 7])
def test_kd_loss_matches_reference(temperature, batch):
    student, teacher = logits(batch, 10, seed=batch), logits(batch, 10, seed=100 + batch)
    value = kd_loss(student, teacher, temperature)
    assert value.shape == () and value.dtype == torch.float32
    expected = ref.kd_loss(student, teacher, temperature)
    assert expected > 1e-3, "the test logits should actually differ"
    assert ref.close(value, expected), (float(value), expected)


def test_kd_loss_is_batchmean_not_elementwise_mean():
    batch, classes, temperature = 5, 10, 4.0
    student, teacher = logits(batch, classes, 1), logits(batch, classes, 2)
    log_p = ref.log_softmax(teacher, temperature)
    log_q = ref.log_softmax(student, temperature)
    elementwise_mean = temperature**2 * (np.exp(log_p) * (log_p - log_q)).mean()  # sum / (B·C)
    value = float(kd_loss(student, teacher, temperature))
    assert ref.close(value, elementwise_mean * classes)
    assert not ref.close(value, elementwise_mean, rtol=0.5)


def test_kd_loss_of_identical_logits_is_zero():
    same = logits(6, 10, 3)
    for temperature in TEMPERATURES:
        assert abs(float(kd_loss(same, same.clone(), temperature))) < 1e-6


def test_kd_loss_is_not_symmetric():
    a, b = logits(4, 10, 4), logits(4, 10, 5)
    assert not ref.close(kd_loss(a, b, 2.0), float(kd_loss(b, a, 2.0)), rtol=1e-3)
    assert ref.close(kd_loss(a, b, 2.0), ref.kd_loss(a, b, 2.0))


@pytest.mark.parametrize("magnitude", [1e4, 1e30])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_loss_extreme_logits_stay_finite_and_exact(magnitude, temperature):
    rng = np.random.default_rng(7)
    student = torch.from_numpy(rng.choice([-1.0, 0.0, 1.0], (4, 6)) * magnitude).float()
    teacher = torch.from_numpy(rng.choice([-1.0, 0.0, 1.0], (4, 6)) * magnitude).float()
    student[0] = teacher[0]  # one row with no divergence at all
    value = kd_loss(student, teacher, temperature)
    assert torch.isfinite(value)
    expected = ref.kd_loss(student.double().numpy(), teacher.double().numpy(), temperature)
    assert np.isfinite(expected) and expected > 0
    assert ref.close(value, expected, rtol=1e-5), (float(value), expected)
    per_sample = kd_loss_per_sample(student, teacher, temperature)
    assert torch.isfinite(per_sample).all() and float(per_sample[0]) == 0.0


def test_kd_loss_gradient_matches_float64_finite_differences():
    batch, classes, temperature, h = 3, 5, 2.0, 1e-5
    student, teacher = logits(batch, classes, 8, scale=2.0), logits(batch, classes, 9, scale=2.0)
    s = student.clone().requires_grad_(True)
    kd_loss(s, teacher, temperature).backward()
    base_s, base_t = student.double().numpy(), teacher.double().numpy()
    numeric = np.zeros_like(base_s)
    for b in range(batch):
        for i in range(classes):
            up, down = base_s.copy(), base_s.copy()
            up[b, i] += h
            down[b, i] -= h
            numeric[b, i] = (ref.kd_loss(up, base_t, temperature) - ref.kd_loss(down, base_t, temperature)) / (2 * h)
    # the closed form, as a second reference: ∂/∂s = T · (q − p) / B
    analytic = temperature * (ref.softmax(base_s, temperature) - ref.softmax(base_t, temperature)) / batch
    np.testing.assert_allclose(numeric, analytic, atol=1e-7)
    np.testing.assert_allclose(s.grad.double().numpy(), numeric, rtol=1e-4, atol=1e-6)


def test_kd_loss_gradient_reaches_student_only():
    s = logits(2, 4, 10).requires_grad_(True)
    t = logits(2, 4, 11).requires_grad_(True)
    kd_loss(s, t, 3.0).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert t.grad is not None  # a pure function: detaching the teacher is the caller's job


def test_kd_loss_gradcheck_in_double():
    student = logits(3, 5, 12).double().requires_grad_(True)
    teacher = logits(3, 5, 13).double()
    assert kd_loss(student, teacher, 2.0).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, 2.0), (student,))


# ---------------------------------------------------------------- kd_loss_per_sample


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_loss_per_sample_matches_reference_and_kd_loss(temperature):
    student, teacher = logits(6, 10, 20), logits(6, 10, 21)
    per_sample = kd_loss_per_sample(student, teacher, temperature)
    assert per_sample.shape == (6,)
    np.testing.assert_allclose(per_sample.double().numpy(), ref.kd_per_sample(student, teacher, temperature),
                               rtol=1e-5, atol=1e-6)
    assert ref.close(per_sample.mean() * temperature**2, float(kd_loss(student, teacher, temperature)))


# ---------------------------------------------------------------- soft_targets


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_soft_targets_match_formula_and_sum_to_one(temperature):
    z = logits(5, 10, 30)
    probs = soft_targets(z, temperature)
    assert probs.shape == z.shape
    np.testing.assert_allclose(probs.sum(dim=-1).numpy(), 1.0, atol=1e-6)
    zt = z.double().numpy() / temperature
    formula = np.exp(zt) / np.exp(zt).sum(axis=-1, keepdims=True)  # the textbook form; safe at this scale
    np.testing.assert_allclose(probs.double().numpy(), formula, rtol=1e-5, atol=1e-7)


def test_soft_targets_at_temperature_one_is_softmax():
    z = logits(4, 7, 31)
    np.testing.assert_allclose(soft_targets(z, 1.0).double().numpy(), ref.softmax(z), rtol=1e-5, atol=1e-7)


def test_soft_targets_tend_to_uniform_as_temperature_grows():
    z = logits(3, 10, 32)
    spreads = [float((soft_targets(z, t) - 0.1).abs().max()) for t in (1.0, 10.0, 100.0, 1e4)]
    assert spreads == sorted(spreads, reverse=True)
    assert spreads[-1] < 1e-3


def test_soft_targets_stable_for_huge_logits():
    z = torch.tensor([[1e30, -1e30, 0.0], [1e4, 1e4, -1e4]])
    probs = soft_targets(z, 2.0)
    assert torch.isfinite(probs).all()
    np.testing.assert_allclose(probs.double().numpy(), ref.softmax(z.double().numpy(), 2.0), atol=1e-7)


# ---------------------------------------------------------------- hint_loss


def test_hint_loss_is_mean_squared_error():
    rng = np.random.default_rng(40)
    projected, target = rng.normal(size=(6, 12)), rng.normal(size=(6, 12))
    value = hint_loss(torch.from_numpy(projected).float(), torch.from_numpy(target).float())
    assert value.shape == () and ref.close(value, ref.mse(projected, target))
    same = torch.from_numpy(projected).float()
    assert float(hint_loss(same, same.clone())) == 0.0


# ---------------------------------------------------------------- distillation_loss


def loss_inputs(seed: int = 50):
    rng = np.random.default_rng(seed)
    student, teacher = logits(8, 10, seed), logits(8, 10, seed + 1)
    targets = torch.from_numpy(rng.integers(0, 10, 8))
    projected = torch.from_numpy(rng.normal(size=(8, 6))).float()
    teacher_features = torch.from_numpy(rng.normal(size=(8, 6))).float()
    return student, teacher, targets, projected, teacher_features


@pytest.mark.parametrize("ce_w, kd_w, f_w", [(0.1, 0.9, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.3, 0.5, 2.0),
                                             (0.0, 0.0, 1.0)])
def test_distillation_loss_parts_and_total(ce_w, kd_w, f_w):
    student, teacher, targets, projected, teacher_features = loss_inputs()
    temperature = 4.0
    parts = distillation_loss(student, targets, teacher_logits=teacher, temperature=temperature, ce_weight=ce_w,
                              kd_weight=kd_w, feature_weight=f_w, projected_student_features=projected,
                              teacher_features=teacher_features)
    assert set(parts) == {"loss", "ce", "kd", "feature"}
    ce = ref.cross_entropy(student, targets) if ce_w else 0.0
    kd = ref.kd_loss(student, teacher, temperature) if kd_w else 0.0
    feature = ref.mse(projected, teacher_features) if f_w else 0.0
    assert ref.close(parts["ce"], ce) and ref.close(parts["kd"], kd) and ref.close(parts["feature"], feature)
    assert ref.close(parts["loss"], ce_w * ce + kd_w * kd + f_w * feature)
    for name in ("ce", "kd", "feature"):
        assert parts[name].shape == ()


def test_zero_weight_parts_need_no_inputs_and_are_zero():
    student, _, targets, _, _ = loss_inputs()
    parts = distillation_loss(student, targets, teacher_logits=None, temperature=4.0, ce_weight=1.0, kd_weight=0.0,
                              feature_weight=0.0)
    assert float(parts["kd"]) == 0.0 and float(parts["feature"]) == 0.0
    assert ref.close(parts["loss"], ref.cross_entropy(student, targets))


def test_zero_ce_weight_needs_no_targets():
    student, teacher, _, _, _ = loss_inputs()
    parts = distillation_loss(student, None, teacher_logits=teacher, temperature=2.0, ce_weight=0.0, kd_weight=1.0)
    assert float(parts["ce"]) == 0.0
    assert ref.close(parts["loss"], ref.kd_loss(student, teacher, 2.0))


def test_distillation_loss_gradient_flows_through_loss_only():
    student, teacher, targets, projected, teacher_features = loss_inputs()
    s = student.clone().requires_grad_(True)
    p = projected.clone().requires_grad_(True)
    parts = distillation_loss(s, targets, teacher_logits=teacher, temperature=4.0, ce_weight=0.5, kd_weight=0.5,
                              feature_weight=1.0, projected_student_features=p, teacher_features=teacher_features)
    parts["loss"].backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # ∂(f_w · MSE)/∂p = 2 (p − f_t) / (B·D)
    expected = 2 * (projected.double() - teacher_features.double()) / projected.numel()
    np.testing.assert_allclose(p.grad.double().numpy(), expected.numpy(), rtol=1e-5, atol=1e-8)


def test_missing_inputs_for_a_weighted_part_are_named():
    student, teacher, targets, projected, _ = loss_inputs()
    with pytest.raises(ValueError, match="kd_weight > 0 needs teacher_logits"):
        distillation_loss(student, targets, teacher_logits=None, temperature=4.0, ce_weight=0.5, kd_weight=0.5)
    with pytest.raises(ValueError, match="feature_weight > 0 needs projected_student_features and teacher_features"):
        distillation_loss(student, targets, teacher_logits=teacher, temperature=4.0, ce_weight=0.0, kd_weight=0.0,
                          feature_weight=1.0, projected_student_features=projected)
