"""Tests for kdcore.losses against the independent float64 references of tests/references.py: Hinton's KD and
its parts, then the feature- and relation-based losses (AT, SP, RKD, PKT), the logit-based ones (DKD, DIST),
multiple teachers and mutual learning; every loss stays finite for huge logits and passes gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import references as ref
from kdcore import losses
from kdcore.losses import distillation_loss, hint_loss, kd_loss, kd_loss_per_sample, soft_targets

TEMPERATURES = (0.5, 1.0, 4.0, 20.0)


# ---------------------------------------------------------------- inputs


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal noise of a given shape, as float32 (the dtype training uses)."""
    return torch.from_numpy(np.random.default_rng(seed).normal(0, scale, shape)).float()


def logits(batch: int, classes: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return rand(batch, classes, seed=seed, scale=scale)


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


# ---------------------------------------------------------------- attention transfer


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_transfer_matches_reference(p, reduction):
    student = [rand(4, 3, 8, 8, seed=1), rand(4, 5, 4, 4, seed=2)]
    teacher = [rand(4, 7, 8, 8, seed=3), rand(4, 2, 4, 4, seed=4)]  # other channel counts
    value = losses.attention_transfer_loss(student, teacher, p=p, reduction=reduction)
    assert value.dtype == torch.float32 and value.shape == ()
    assert ref.close(value, ref.attention_transfer(student, teacher, p, reduction))


@pytest.mark.parametrize("student_side,teacher_side", [(8, 4), (3, 7), (6, 6)])
def test_attention_transfer_pools_the_larger_map(student_side, teacher_side):
    student, teacher = [rand(3, 4, student_side, student_side, seed=5)], [rand(3, 6, teacher_side, teacher_side, seed=6)]
    assert ref.close(losses.attention_transfer_loss(student, teacher), ref.attention_transfer(student, teacher))


def test_attention_transfer_edge_cases():
    maps = [rand(1, 4, 5, 5, seed=7)]
    assert float(losses.attention_transfer_loss(maps, [m.clone() for m in maps])) == pytest.approx(0, abs=1e-12)
    scaled = [m * 1e4 for m in maps]  # attention maps are normalised: scale does not matter
    assert float(losses.attention_transfer_loss(scaled, maps)) == pytest.approx(0, abs=1e-10)
    with pytest.raises(ValueError, match="4-D"):
        losses.attention_transfer_loss([rand(2, 8, seed=1)], [rand(2, 8, seed=2)])
    with pytest.raises(ValueError, match="equally many"):
        losses.attention_transfer_loss(maps, maps + maps)


# ---------------------------------------------------------------- similarity preserving


def test_similarity_preserving_matches_reference():
    student, teacher = rand(6, 3, 4, 4, seed=8), rand(6, 10, 2, 2, seed=9)
    assert ref.close(losses.similarity_preserving_loss(student, teacher), ref.similarity_preserving(student, teacher))
    pairs = [(rand(6, 5, seed=10), rand(6, 9, seed=11)), (student, teacher)]
    summed = losses.similarity_preserving_loss([s for s, _ in pairs], [t for _, t in pairs])
    assert ref.close(summed, sum(ref.similarity_preserving(s, t) for s, t in pairs))


def test_similarity_preserving_edge_cases():
    features = rand(5, 12, seed=12)
    assert float(losses.similarity_preserving_loss(features, features.clone())) == pytest.approx(0, abs=1e-12)
    assert float(losses.similarity_preserving_loss(rand(1, 4, seed=1), rand(1, 9, seed=2))) == pytest.approx(0, abs=1e-12)


# ---------------------------------------------------------------- relational KD


@pytest.mark.parametrize("batch", [3, 6])
def test_rkd_matches_reference(batch):
    student, teacher = rand(batch, 5, seed=13), rand(batch, 8, seed=14, scale=3)
    parts = losses.rkd_loss_parts(student, teacher)
    distance, angle = ref.rkd(student, teacher)
    assert ref.close(parts["distance"], distance) and ref.close(parts["angle"], angle)
    assert ref.close(losses.rkd_loss(student, teacher), 25 * distance + 50 * angle)
    assert ref.close(losses.rkd_loss(student, teacher, distance_weight=2, angle_weight=0.5), 2 * distance + 0.5 * angle)


def test_rkd_edge_cases():
    features = rand(4, 6, seed=15)
    assert float(losses.rkd_loss(features, features.clone())) == pytest.approx(0, abs=1e-10)
    assert float(losses.rkd_loss(features * 7, features)) == pytest.approx(0, abs=1e-6)  # distances are normalised
    with pytest.raises(ValueError, match="at least 2"):
        losses.rkd_loss_parts(rand(1, 6, seed=1), rand(1, 6, seed=2))
    with pytest.raises(ValueError, match="at least 3"):
        losses.rkd_loss(rand(2, 6, seed=1), rand(2, 6, seed=2))
    two = losses.rkd_loss(rand(2, 6, seed=1), rand(2, 6, seed=2), angle_weight=0)
    assert math.isfinite(float(two))


def test_rkd_gradient_stays_finite_when_two_student_points_coincide():
    student = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [3.0, 1.0]], requires_grad=True)
    losses.rkd_loss(student, rand(4, 5, seed=3)).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().max() < 100


# ---------------------------------------------------------------- PKT


def test_pkt_matches_reference():
    student, teacher = rand(7, 4, seed=16), rand(7, 11, seed=17)
    assert ref.close(losses.pkt_loss(student, teacher), ref.pkt(student, teacher))


def test_pkt_edge_cases():
    features = rand(5, 4, seed=18)
    assert float(losses.pkt_loss(features, features.clone())) == pytest.approx(0, abs=1e-7)
    assert float(losses.pkt_loss(rand(1, 3, seed=1), rand(1, 8, seed=2))) == pytest.approx(0, abs=1e-7)
    zeros = torch.zeros(3, 4, requires_grad=True)
    losses.pkt_loss(zeros, rand(3, 4, seed=3)).backward()
    assert torch.isfinite(zeros.grad).all()


# ---------------------------------------------------------------- DKD


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("batch", [1, 6])
def test_dkd_matches_reference(batch, temperature):
    student, teacher = rand(batch, 10, seed=19, scale=3), rand(batch, 10, seed=20, scale=3)
    target = torch.arange(batch) % 10
    expected, _, _ = ref.dkd(student, teacher, target, 1.0, 8.0, temperature)
    assert ref.close(losses.dkd_loss(student, teacher, target, 1.0, 8.0, temperature), expected)
    expected, tckd, nckd = ref.dkd(student, teacher, target, 0.5, 2.0, temperature)
    assert ref.close(losses.dkd_loss(student, teacher, target, alpha=0.5, beta=2.0, temperature=temperature), expected)
    terms = losses.dkd_terms(student, teacher, target, temperature)
    np.testing.assert_allclose(ref.f64(terms[0]), tckd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ref.f64(terms[1]), nckd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_dkd_decomposition_identity(temperature):
    """Zhao et al., eq. (3)-(4): KD = TCKD + (1 − p_target^teacher) · NCKD, sample by sample."""
    student, teacher = rand(8, 6, seed=21, scale=2), rand(8, 6, seed=22, scale=2)
    target = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    tckd, nckd = losses.dkd_terms(student, teacher, target, temperature)
    p_target = torch.softmax(teacher / temperature, dim=1)[torch.arange(8), target]
    kd = losses.kd_loss_per_sample(student, teacher, temperature)
    torch.testing.assert_close(tckd + (1 - p_target) * nckd, kd, rtol=1e-4, atol=1e-6)
    # and with β = 1 − p_target per sample, α = 1, DKD is KD: check through the batch of one
    one = slice(0, 1)
    beta = float(1 - p_target[0])
    dkd = losses.dkd_loss(student[one], teacher[one], target[one], alpha=1.0, beta=beta, temperature=temperature)
    assert ref.close(dkd, losses.kd_loss(student[one], teacher[one], temperature), rtol=1e-4)


def test_dkd_edge_cases():
    logits = rand(4, 5, seed=23)
    target = torch.tensor([0, 1, 2, 3])
    assert float(losses.dkd_loss(logits, logits.clone(), target)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="2 classes"):
        losses.dkd_loss(rand(2, 1, seed=1), rand(2, 1, seed=2), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------- DIST


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_matches_reference(temperature):
    student, teacher = rand(6, 5, seed=24, scale=2), rand(6, 5, seed=25, scale=2)
    for beta, gamma in ((1.0, 1.0), (2.0, 0.5)):
        expected = ref.dist(student, teacher, beta, gamma, temperature)
        assert ref.close(losses.dist_loss(student, teacher, beta, gamma, temperature), expected)


def test_dist_edge_cases():
    logits = rand(4, 5, seed=26)
    assert float(losses.dist_loss(logits, logits.clone())) == pytest.approx(0, abs=1e-5)
    # Pearson correlation ignores a positive affine change of the probabilities: not of the logits,
    # but a shift of all logits leaves the probabilities (and the loss) unchanged
    assert float(losses.dist_loss(logits + 3.0, logits)) == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        losses.dist_loss(rand(1, 5, seed=1), rand(1, 5, seed=2))


# ---------------------------------------------------------------- multiple teachers, mutual learning


def test_multi_teacher_soft_targets_and_kd_from_probs():
    teachers = [rand(4, 6, seed=27 + k, scale=2) for k in range(3)]
    averaged = losses.multi_teacher_soft_targets(teachers, 2.0)
    np.testing.assert_allclose(ref.f64(averaged), ref.multi_teacher_soft_targets(teachers, 2.0), rtol=1e-5, atol=1e-7)
    weighted = losses.multi_teacher_soft_targets(teachers, 2.0, weights=[2.0, 1.0, 1.0])
    np.testing.assert_allclose(ref.f64(weighted), ref.multi_teacher_soft_targets(teachers, 2.0, [2.0, 1.0, 1.0]),
                               rtol=1e-5, atol=1e-7)
    student = rand(4, 6, seed=31)
    assert ref.close(losses.kd_loss_from_probs(student, averaged, 2.0), ref.kd_loss_from_probs(student, averaged, 2.0))
    # one teacher: the same as Hinton's KD
    assert ref.close(losses.kd_loss_from_probs(student, losses.soft_targets(teachers[0], 2.0), 2.0),
                     losses.kd_loss(student, teachers[0], 2.0))
    for weights in ([1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0]):
        with pytest.raises(ValueError, match="weights must be 3 non-negative numbers with a positive sum"):
            losses.multi_teacher_soft_targets(teachers, 2.0, weights=weights)


def test_mutual_learning_matches_reference():
    cohort = [rand(5, 4, seed=35 + k, scale=2) for k in range(3)]
    targets = torch.tensor([0, 1, 2, 3, 0])
    for temperature in (1.0, 3.0):
        values = losses.mutual_learning_loss(cohort, targets, temperature)
        expected = ref.mutual_learning(cohort, targets, temperature)
        assert len(values) == 3 and all(ref.close(v, e) for v, e in zip(values, expected)), (values, expected)
    with pytest.raises(ValueError, match="at least 2"):
        losses.mutual_learning_loss(cohort[:1], targets)


def test_mutual_learning_trains_each_network_only_through_its_own_loss():
    a, b = rand(4, 3, seed=40).requires_grad_(), rand(4, 3, seed=41).requires_grad_()
    loss_a, _ = losses.mutual_learning_loss([a, b], torch.tensor([0, 1, 2, 0]))
    loss_a.backward()
    assert a.grad is not None and b.grad is None


# ---------------------------------------------------------------- large logits and gradients, every loss


def _logit_losses():
    target = torch.tensor([0, 1, 2, 3])
    return {
        "dkd": lambda s, t: losses.dkd_loss(s, t, target),
        "dist": lambda s, t: losses.dist_loss(s, t, temperature=4.0),
        "kd_from_probs": lambda s, t: losses.kd_loss_from_probs(s, losses.multi_teacher_soft_targets([t, -t], 4.0), 4.0),
        "dml": lambda s, t: sum(losses.mutual_learning_loss([s, t], target)),
    }


@pytest.mark.parametrize("name", list(_logit_losses()))
def test_logit_losses_stay_finite_for_huge_logits(name):
    loss = _logit_losses()[name]
    student = (rand(4, 5, seed=42).sign() * 1e4).requires_grad_()
    teacher = rand(4, 5, seed=43).sign() * -1e4
    value = loss(student, teacher)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def _feature_losses():
    return {
        "at": lambda s, t: losses.attention_transfer_loss([s], [t]),
        "sp": losses.similarity_preserving_loss,
        "rkd": lambda s, t: losses.rkd_loss(s.flatten(1), t.flatten(1)),
        "pkt": lambda s, t: losses.pkt_loss(s.flatten(1), t.flatten(1)),
    }


@pytest.mark.parametrize("name", list(_feature_losses()))
def test_feature_losses_send_gradients_to_the_student_only(name):
    student = rand(5, 3, 4, 4, seed=44).requires_grad_()
    teacher = rand(5, 6, 4, 4, seed=45, scale=100).requires_grad_()
    value = _feature_losses()[name](student, teacher.detach())
    value.backward()
    assert torch.isfinite(value) and float(value.detach()) > 0
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


def _double(*shape: int, seed: int) -> torch.Tensor:
    return rand(*shape, seed=seed).double().requires_grad_()


@pytest.mark.parametrize("name,loss,shapes", [
    ("at", lambda s, t: losses.attention_transfer_loss([s], [t]), ((3, 2, 4, 4), (3, 5, 2, 2))),
    ("sp", losses.similarity_preserving_loss, ((4, 3), (4, 6))),
    ("rkd", losses.rkd_loss, ((4, 3), (4, 5))),
    ("pkt", losses.pkt_loss, ((4, 3), (4, 5))),
    ("dkd", lambda s, t: losses.dkd_loss(s, t, torch.tensor([0, 1, 2, 0])), ((4, 3), (4, 3))),
    ("dist", lambda s, t: losses.dist_loss(s, t, temperature=2.0), ((4, 3), (4, 3))),
])
def test_gradients_match_finite_differences(name, loss, shapes):
    """float64 inputs stay float64, so autograd can be checked against finite differences."""
    student, teacher = _double(*shapes[0], seed=60), _double(*shapes[1], seed=61)
    assert loss(student, teacher).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, (student, teacher))
