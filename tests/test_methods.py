"""Tests for the distillation methods: the losses in kdcore.losses against independent float64 numpy
references of each paper's formula, the torch-free registry in kdcore.methods, the method settings in
kdcore.config, and every method's per-step objective (kdcore/methods/<name>.py) on real (tiny) models.
The three newest methods have their own modules: test_method_crd.py, test_method_ctkd.py, test_method_kd_ls.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore import losses
from kdcore.config import RunConfig, build_config
from kdcore.errors import ConfigError
from kdcore.methods import METHODS, get_method, list_methods, resolve_params, series_terms, teacher_seeds
from kdcore.methods.multi_teacher import TeacherEnsemble, ensemble_logits
from kdcore.methods.objective import BuildContext, StepContext, hyper_of
from kdcore.models import build_model

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- float64 references


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, scale, shape)).float()


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def softmax_ref(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kl_ref(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Σ_i p_i log(p_i / q_i) over the last axis, with 0 log 0 = 0."""
    safe_p = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * (np.log(safe_p) - np.log(q)), 0.0).sum(axis=-1)


def huber_ref(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def adaptive_avg_pool_ref(q: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PyTorch's adaptive average pooling of [B, H, W]: cell i covers floor(i·H/h) .. ceil((i+1)·H/h)."""
    batch, height, width = q.shape
    out = np.zeros((batch, *size))
    for i in range(size[0]):
        r0, r1 = (i * height) // size[0], -((-(i + 1) * height) // size[0])
        for j in range(size[1]):
            c0, c1 = (j * width) // size[1], -((-(j + 1) * width) // size[1])
            out[:, i, j] = q[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def at_ref(student_maps, teacher_maps, p: float, reduction: str) -> float:
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        q_s, q_t = (np.abs(f64(s)) ** p).sum(axis=1), (np.abs(f64(t)) ** p).sum(axis=1)
        size = (min(q_s.shape[1], q_t.shape[1]), min(q_s.shape[2], q_t.shape[2]))
        q_s, q_t = adaptive_avg_pool_ref(q_s, size), adaptive_avg_pool_ref(q_t, size)
        q_s, q_t = q_s.reshape(len(q_s), -1), q_t.reshape(len(q_t), -1)
        q_s /= np.linalg.norm(q_s, axis=1, keepdims=True)
        q_t /= np.linalg.norm(q_t, axis=1, keepdims=True)
        squared = (q_s - q_t) ** 2
        total += squared.mean() if reduction == "mean" else squared.sum(axis=1).mean()
    return total


def sp_ref(student, teacher) -> float:
    f_s, f_t = f64(student).reshape(len(student), -1), f64(teacher).reshape(len(teacher), -1)
    g_s, g_t = f_s @ f_s.T, f_t @ f_t.T
    g_s /= np.linalg.norm(g_s, axis=1, keepdims=True)
    g_t /= np.linalg.norm(g_t, axis=1, keepdims=True)
    return ((g_s - g_t) ** 2).sum() / len(f_s) ** 2


def rkd_ref(student, teacher) -> tuple[float, float]:
    """Park et al.: distance and angle terms, loops over every pair and triplet."""
    def distances(e):
        b = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(b)] for i in range(b)])
        return d / d[~np.eye(b, dtype=bool)].mean()

    def cosines(e):
        b, out = len(e), []
        for j in range(b):
            for i in range(b):
                for k in range(b):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out.append(0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv))
        return np.array(out)

    s, t = f64(student).reshape(len(student), -1), f64(teacher).reshape(len(teacher), -1)
    return huber_ref(distances(s) - distances(t)).mean(), huber_ref(cosines(s) - cosines(t)).mean()


def pkt_ref(student, teacher, eps: float = 1e-7) -> float:
    def probs(f):
        unit = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        kernel = (unit @ unit.T + 1) / 2
        return kernel / kernel.sum(axis=1, keepdims=True)

    p_s, p_t = probs(f64(student)), probs(f64(teacher))
    return (p_t * np.log((p_t + eps) / (p_s + eps))).mean()


def dkd_ref(student, teacher, target, alpha, beta, temperature) -> tuple[float, np.ndarray, np.ndarray]:
    """Zhao et al.: b = [p_t, 1 − p_t]; p̂_i = p_i / (1 − p_t) over non-target classes."""
    p_s, p_t = softmax_ref(f64(student), temperature), softmax_ref(f64(teacher), temperature)
    tckd, nckd = [], []
    for row, y in enumerate(target.tolist()):
        b_s = np.array([p_s[row, y], 1 - p_s[row, y]])
        b_t = np.array([p_t[row, y], 1 - p_t[row, y]])
        tckd.append(kl_ref(b_t, b_s))
        others = [c for c in range(p_s.shape[1]) if c != y]
        nckd.append(kl_ref(p_t[row, others] / b_t[1], p_s[row, others] / b_s[1]))
    tckd, nckd = np.array(tckd), np.array(nckd)
    return temperature**2 * (alpha * tckd.mean() + beta * nckd.mean()), tckd, nckd


def dist_ref(student, teacher, beta, gamma, temperature) -> float:
    y_s, y_t = softmax_ref(f64(student), temperature), softmax_ref(f64(teacher), temperature)
    inter = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s, y_t)])
    intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s.T, y_t.T)])
    return temperature**2 * (beta * inter + gamma * intra)


def close(actual, expected: float, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    actual = actual.detach() if isinstance(actual, torch.Tensor) else actual
    actual, expected = (float(v.detach()) if torch.is_tensor(v) else float(v) for v in (actual, expected))
    return abs(actual - expected) <= atol + rtol * abs(expected)


# ---------------------------------------------------------------- attention transfer


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_transfer_matches_reference(p, reduction):
    student = [rand(4, 3, 8, 8, seed=1), rand(4, 5, 4, 4, seed=2)]
    teacher = [rand(4, 7, 8, 8, seed=3), rand(4, 2, 4, 4, seed=4)]  # other channel counts
    value = losses.attention_transfer_loss(student, teacher, p=p, reduction=reduction)
    assert value.dtype == torch.float32 and value.shape == ()
    assert close(value, at_ref(student, teacher, p, reduction))


@pytest.mark.parametrize("student_side,teacher_side", [(8, 4), (3, 7), (6, 6)])
def test_attention_transfer_pools_the_larger_map(student_side, teacher_side):
    student, teacher = [rand(3, 4, student_side, student_side, seed=5)], [rand(3, 6, teacher_side, teacher_side, seed=6)]
    assert close(losses.attention_transfer_loss(student, teacher), at_ref(student, teacher, 2.0, "mean"))


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
    assert close(losses.similarity_preserving_loss(student, teacher), sp_ref(student, teacher))
    pairs = [(rand(6, 5, seed=10), rand(6, 9, seed=11)), (student, teacher)]
    summed = losses.similarity_preserving_loss([s for s, _ in pairs], [t for _, t in pairs])
    assert close(summed, sum(sp_ref(s, t) for s, t in pairs))


def test_similarity_preserving_edge_cases():
    features = rand(5, 12, seed=12)
    assert float(losses.similarity_preserving_loss(features, features.clone())) == pytest.approx(0, abs=1e-12)
    assert float(losses.similarity_preserving_loss(rand(1, 4, seed=1), rand(1, 9, seed=2))) == pytest.approx(0, abs=1e-12)


# ---------------------------------------------------------------- relational KD


@pytest.mark.parametrize("batch", [3, 6])
def test_rkd_matches_reference(batch):
    student, teacher = rand(batch, 5, seed=13), rand(batch, 8, seed=14, scale=3)
    parts = losses.rkd_loss_parts(student, teacher)
    distance, angle = rkd_ref(student, teacher)
    assert close(parts["distance"], distance) and close(parts["angle"], angle)
    assert close(losses.rkd_loss(student, teacher), 25 * distance + 50 * angle)
    assert close(losses.rkd_loss(student, teacher, distance_weight=2, angle_weight=0.5), 2 * distance + 0.5 * angle)


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
    assert close(losses.pkt_loss(student, teacher), pkt_ref(student, teacher))


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
    expected, _, _ = dkd_ref(student, teacher, target, 1.0, 8.0, temperature)
    assert close(losses.dkd_loss(student, teacher, target, 1.0, 8.0, temperature), expected)
    expected, _, _ = dkd_ref(student, teacher, target, 0.5, 2.0, temperature)
    assert close(losses.dkd_loss(student, teacher, target, alpha=0.5, beta=2.0, temperature=temperature), expected)


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
    assert close(dkd, losses.kd_loss(student[one], teacher[one], temperature))


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
        expected = dist_ref(student, teacher, beta, gamma, temperature)
        assert close(losses.dist_loss(student, teacher, beta, gamma, temperature), expected)


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
    expected = np.mean([softmax_ref(f64(t), 2.0) for t in teachers], axis=0)
    np.testing.assert_allclose(f64(averaged), expected, rtol=1e-5, atol=1e-7)
    weighted = losses.multi_teacher_soft_targets(teachers, 2.0, weights=[2.0, 1.0, 1.0])
    probs = [softmax_ref(f64(t), 2.0) for t in teachers]
    expected = (2 * probs[0] + probs[1] + probs[2]) / 4
    np.testing.assert_allclose(f64(weighted), expected, rtol=1e-5, atol=1e-7)
    student = rand(4, 6, seed=31)
    kd = losses.kd_loss_from_probs(student, averaged, 2.0)
    assert close(kd, 4.0 * kl_ref(f64(averaged), softmax_ref(f64(student), 2.0)).mean())
    # one teacher: the same as Hinton's KD
    assert close(losses.kd_loss_from_probs(student, losses.soft_targets(teachers[0], 2.0), 2.0),
                 losses.kd_loss(student, teachers[0], 2.0))
    with pytest.raises(ValueError):
        losses.multi_teacher_soft_targets(teachers, 2.0, weights=[1.0, -1.0, 1.0])


def test_ensemble_logits_reproduce_the_averaged_distribution():
    teachers = [rand(5, 4, seed=32 + k, scale=3) for k in range(3)]
    logits = ensemble_logits(teachers, 4.0)
    torch.testing.assert_close(torch.softmax(logits / 4.0, dim=1), losses.multi_teacher_soft_targets(teachers, 4.0))
    huge = [torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([[-1e4, 1e4, 0.0]])]
    assert torch.isfinite(ensemble_logits(huge, 1.0)).all()


def test_mutual_learning_matches_reference():
    cohort = [rand(5, 4, seed=35 + k, scale=2) for k in range(3)]
    targets = torch.tensor([0, 1, 2, 3, 0])
    for temperature in (1.0, 3.0):
        values = losses.mutual_learning_loss(cohort, targets, temperature)
        assert len(values) == 3
        for k, value in enumerate(values):
            p_k = softmax_ref(f64(cohort[k]))
            ce = -np.log(p_k[np.arange(5), targets.numpy()]).mean()
            peers = [temperature**2 * kl_ref(softmax_ref(f64(cohort[j]), temperature),
                                             softmax_ref(f64(cohort[k]), temperature)).mean()
                     for j in range(3) if j != k]
            assert close(value, ce + np.mean(peers))
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


# ---------------------------------------------------------------- the registry


def test_every_method_documents_itself_and_its_parameters():
    assert list(METHODS)[0] == "kd" and len(METHODS) >= 14
    for name, method in METHODS.items():
        spec = method.spec
        assert spec.name == name and spec.title and spec.paper and len(spec.explanation) > 80
        for key, param in spec.params.items():
            assert param.low <= param.default <= param.high, (name, key)
            assert param.help
        assert resolve_params(name) == {k: p.default for k, p in spec.params.items()}
        assert len({term.name for term in spec.terms}) == len(spec.terms)
        assert all(term.kind in ("loss", "value") for term in spec.terms)


def test_each_method_lives_in_its_own_module():
    for name, method in METHODS.items():
        assert type(method).__module__ == f"kdcore.methods.{name}", name


def test_list_methods_is_json_and_covers_every_method():
    rows = json.loads(json.dumps(list_methods()))
    assert [row["name"] for row in rows] == list(METHODS)
    assert {"crd", "ctkd", "kd_ls"} <= {row["name"] for row in rows}
    at = next(row for row in rows if row["name"] == "at")
    assert at["params"]["weight"] == {"default": 1000.0, "low": 0.0, "high": 1e5, "help": at["params"]["weight"]["help"],
                                      "integer": False}
    assert at["needs_feature_maps"] is True and at["uses_logit_kd"] is False
    dkd = next(row for row in rows if row["name"] == "dkd")
    assert [term["name"] for term in dkd["terms"]] == ["tckd", "nckd"]
    expected = {"name", "title", "paper", "explanation", "params", "needs_feature_maps", "uses_logit_kd", "terms"}
    assert all(expected <= set(row) for row in rows)


def test_series_terms_name_what_a_run_records():
    assert list(series_terms("kd")) == ["train_loss", "train_ce", "train_kd", "train_feature"]
    assert list(series_terms("dkd"))[-2:] == ["train_tckd", "train_nckd"]
    assert series_terms("ctkd")["train_temperature"].kind == "value"
    assert list(series_terms("from-an-older-version")) == ["train_loss", "train_ce", "train_kd", "train_feature"]


# ---------------------------------------------------------------- config


def refused(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(None, overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_default_method_is_kd_and_round_trips():
    assert RunConfig().method == "kd" and RunConfig().method_params == {}
    config = build_config(None, ["method=at", "method.weight=500", "method.stages=2", "student.arch=cnn-small",
                                 "teacher.arch=cnn"])
    assert config.method == "at" and config.method_params == {"weight": 500.0, "stages": 2}
    assert isinstance(config.method_params["stages"], int)
    again = RunConfig.from_json(config.to_json())
    assert again == config and again.to_json() == config.to_json()
    assert build_config(None, ["method_params.weight=500", "method=at", "student.arch=cnn-small"]).method_params == {
        "weight": 500.0}


def test_method_does_not_change_the_teacher_key():
    base = RunConfig()
    assert build_config(None, ["method=dkd", "method.beta=2"]).teacher_key() == base.teacher_key()


def test_unknown_method_lists_the_valid_ones():
    message = refused(["method=nope"])
    assert "nope" in message and all(name in message for name in METHODS)


def test_unknown_parameter_lists_the_methods_parameters():
    message = refused(["method=dkd", "method.gamma=1"])
    assert "'gamma'" in message and "alpha, beta, warmup_epochs, standardize" in message
    assert "no parameters" in refused(["method=fitnets", "weights.feature=1", "method.weight=1"])


@pytest.mark.parametrize("override,field", [
    ("method.beta=-1", "method.beta"), ("method.beta=21", "method.beta"), ("method.alpha=true", "method.alpha"),
    ("method.alpha=abc", "method.alpha"), ("method.warmup_epochs=2.5", "method.warmup_epochs"),
    ("method.alpha=.nan", "method.alpha"), ("method.standardize=2", "method.standardize"),
])
def test_out_of_range_parameters_are_refused_by_name(override, field):
    assert field in refused(["method=dkd", override])


def test_methods_that_need_feature_maps_refuse_mlps():
    message = refused(["method=at"])  # the default student is mlp-small
    assert message == "at needs convolutional feature maps; student.arch mlp-small has none — pick cnn/resnet*"
    assert "teacher.arch mlp" in refused(["method=at", "student.arch=cnn-small", "teacher.arch=mlp"])
    for name in ("sp", "rkd", "pkt", "dkd", "dist", "dml", "multi_teacher", "function_matching", "crd", "ctkd", "kd_ls"):
        assert build_config(None, [f"method={name}"]).method == name  # MLP pairs are fine


def test_cross_field_checks():
    assert "weights.feature" in refused(["method=fitnets"])
    assert build_config(None, ["method=fitnets", "weights.feature=1"]).method == "fitnets"
    assert "teacher.checkpoint" in refused(["method=multi_teacher", "teacher.checkpoint=/tmp/t.pt"])
    assert "weights.kd" in refused(["method=function_matching", "weights.kd=0", "weights.ce=1"])


def test_teacher_seeds():
    config = build_config(None, ["method=multi_teacher", "method.teachers=4", "teacher.seed=10"])
    assert teacher_seeds(config) == [10, 11, 12, 13]
    assert teacher_seeds(build_config(None, ["teacher.seed=7"])) == [7]


# ---------------------------------------------------------------- the per-step objective on real models


SHAPE, CLASSES = (1, 8, 8), 10


class _Info:
    input_shape, num_classes, kind = SHAPE, CLASSES, "image"


def build(method: str, student_arch: str, teacher_arch: str, extra: list[str] = (), train_size: int = 64):
    """A method's objective for a tiny student/teacher pair, as the trainer builds it."""
    config = build_config(None, [f"method={method}", f"student.arch={student_arch}", f"teacher.arch={teacher_arch}",
                                 "dataset=digits", *extra])
    torch.manual_seed(0)
    student = build_model(student_arch, SHAPE, CLASSES)
    teacher = build_model(teacher_arch, SHAPE, CLASSES).requires_grad_(False).eval()
    context = BuildContext(config, student, teacher, _Info(), train_size, torch.device("cpu"),
                           resolve_params(method, config.method_params))
    return config, student, teacher, get_method(method).objective(context)


def step(config, objective, student, x, y, epoch=1, indices=None):
    """One training step's parts, as the trainer computes them (teacher run on the batch)."""
    x = objective.prepare_batch(x)
    indices = torch.arange(len(x)) if indices is None else indices
    ctx = StepContext(x, y, indices, epoch, (epoch - 1) * 4 + 1, student.forward_features(x),
                      objective.teacher_outputs(x), hyper_of(config), steps_per_epoch=4)
    return objective.step(ctx)


PAIRS = [("cnn-small", "cnn"), ("mlp-tiny", "mlp-small")]  # MLPs only where the method allows them


@pytest.mark.parametrize("method,pair", [(m, pair) for m in METHODS for pair in PAIRS
                                         if not (METHODS[m].spec.needs_feature_maps and pair[0].startswith("mlp"))])
def test_objective_trains_the_student_and_never_the_teacher(method, pair):
    extra = ["weights.feature=1"] if method == "fitnets" else []
    config, student, teacher, objective = build(method, *pair, extra)
    x, y = rand(6, *SHAPE, seed=50), torch.arange(6) % CLASSES
    parts = step(config, objective, student, x, y, epoch=3)
    parts["loss"].backward()
    assert parts["loss"].shape == () and torch.isfinite(parts["loss"]) and float(parts["loss"].detach()) > 0
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    if objective.modules is not None:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.modules.parameters())
    recorded = {f"train_{name}" for name in parts}
    assert recorded <= set(series_terms(method)), recorded - set(series_terms(method))
    assert {f"train_{term.name}" for term in METHODS[method].spec.terms} <= recorded  # every own term is returned
    assert all(value.shape == () and not value.requires_grad for name, value in parts.items() if name != "loss")


def test_objective_flags():
    specs = {name: method.spec for name, method in METHODS.items()}
    assert {n for n, s in specs.items() if s.needs_teacher_forward} == {"at", "sp", "function_matching"}
    assert {n for n, s in specs.items() if s.needs_teacher_features} == {"rkd", "pkt", "fitnets", "crd"}
    assert {n for n, s in specs.items() if not s.uses_logit_kd} == {"at", "sp", "rkd", "pkt", "dkd", "dist", "dml"}
    assert {n for n, s in specs.items() if not s.uses_labels} == {"dml", "function_matching"}
    assert {n for n, s in specs.items() if s.stackable} == {"kd", "kd_ls"}
    built = {name: build(name, "cnn-small", "cnn", ["weights.feature=1"] if name == "fitnets" else [])[3]
             for name in METHODS}
    assert {n for n, o in built.items() if o.modules is not None} == {"dml", "crd", "ctkd", "fitnets"}


def test_loss_is_the_weighted_sum_of_its_parts():
    config, student, _, objective = build("kd", "mlp-tiny", "mlp-small", ["weights.ce=0.3", "weights.kd=0.7"])
    x, y = rand(5, *SHAPE, seed=56), torch.arange(5)
    parts = step(config, objective, student, x, y)
    assert close(parts["loss"], 0.3 * parts["ce"] + 0.7 * parts["kd"])
    s, t = f64(student(x)), f64(objective.teacher(x))
    assert close(parts["kd"], 16 * kl_ref(softmax_ref(t, 4), softmax_ref(s, 4)).mean())


def test_objective_uses_the_configured_parameters():
    config, student, _, at = build("at", "cnn-small", "cnn", ["method.weight=10", "method.stages=2", "method.p=1"])
    x, y = rand(4, *SHAPE, seed=51), torch.arange(4)
    parts = step(config, at, student, x, y)
    s_maps, t_maps = student.forward_features(x)[2][-2:], at.teacher.forward_features(x)[2][-2:]
    expected = at_ref(s_maps, t_maps, 1.0, "mean")
    assert close(parts["at"], expected) and close(parts["loss"], config.weights.ce * parts["ce"] + 10 * expected)


def test_dkd_warm_up_ramps_linearly():
    config, student, _, dkd = build("dkd", "mlp-tiny", "mlp-small", ["method.warmup_epochs=4"])
    x, y = rand(4, *SHAPE, seed=52), torch.arange(4)

    def dkd_term(epoch):
        parts = step(config, dkd, student, x, y, epoch=epoch)
        assert close(parts["tckd"] * 1 + parts["nckd"] * 8, (parts["loss"] - 0.5 * parts["ce"]) * 4 / min(epoch, 4))
        return float((parts["loss"] - 0.5 * parts["ce"]).detach())

    values = [dkd_term(e) for e in (1, 2, 4, 9)]
    assert values[1] == pytest.approx(2 * values[0], rel=1e-5)
    assert values[2] == pytest.approx(4 * values[0], rel=1e-5) and values[3] == pytest.approx(values[2], rel=1e-6)


def test_dkd_terms_are_the_papers_parts():
    config, student, teacher, dkd = build("dkd", "mlp-tiny", "mlp-small", ["method.warmup_epochs=0"])
    x, y = rand(6, *SHAPE, seed=57), torch.arange(6)
    parts = step(config, dkd, student, x, y)
    tckd, nckd = losses.dkd_terms(student(x), teacher(x), y, 4.0)
    assert close(parts["tckd"], 16 * tckd.mean()) and close(parts["nckd"], 16 * nckd.mean())


def test_function_matching_mixes_batches_reproducibly():
    x = rand(8, *SHAPE, seed=53)
    first = build("function_matching", "mlp-tiny", "mlp-small")[3].prepare_batch(x)
    again = build("function_matching", "mlp-tiny", "mlp-small")[3].prepare_batch(x)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, x)
    assert float(first.min()) >= float(x.min()) - 1e-6 and float(first.max()) <= float(x.max()) + 1e-6  # convex mixes
    plain = build("function_matching", "mlp-tiny", "mlp-small", ["method.mixup_alpha=0"])[3]
    assert plain.prepare_batch(x) is x


def test_objective_refuses_mlps_for_feature_map_methods():
    config = RunConfig.from_dict({"dataset": "digits", "student": {"arch": "cnn-small"}, "teacher": {"arch": "cnn"},
                                  "method": "at"})
    student, teacher = build_model("cnn-small", SHAPE, CLASSES), build_model("mlp", SHAPE, CLASSES)
    object.__setattr__(config.teacher, "arch", "mlp")  # a config that slipped past validation
    context = BuildContext(config, student, teacher, _Info(), 64, torch.device("cpu"), resolve_params("at"))
    with pytest.raises(ConfigError, match="at needs convolutional feature maps; teacher mlp has none"):
        get_method("at").objective(context)


def test_teacher_ensemble_acts_as_one_teacher():
    torch.manual_seed(1)
    members = [build_model("mlp-tiny", SHAPE, CLASSES).eval() for _ in range(3)]
    ensemble = TeacherEnsemble.of(members, temperature=4.0)
    x = rand(5, *SHAPE, seed=54)
    logits, features, stages = ensemble.forward_features(x)
    torch.testing.assert_close(torch.softmax(logits / 4.0, dim=1),
                               losses.multi_teacher_soft_targets([m(x) for m in members], 4.0))
    assert features.shape == (5, members[0].feature_dim) and ensemble.feature_dim == members[0].feature_dim
    torch.testing.assert_close(ensemble(x), logits)


def test_formula_and_legend_come_from_the_method():
    for name, method in METHODS.items():
        params = resolve_params(name)
        terms = method.formula({"ce": 0.5, "kd": 0.5, "feature": 0.0}, 4.0, params)
        assert terms and all(isinstance(term, str) and term for term in terms), name
        assert all(isinstance(line, str) for line in method.legend(params))
