"""Independent float64 references for the tests: each paper's formula written again in plain numpy.

Nothing here imports torch or kdcore, so a reference can never share a bug with the code it checks.
Inputs may be numpy arrays, nested lists or (CPU) torch tensors; `f64` turns any of them into a
float64 array. Shapes follow `kdcore.losses`: logits [B, C], features [B, D], targets int [B].

    import references as ref
    assert close(kd_loss(student, teacher, 4.0), ref.kd_loss(student, teacher, 4.0))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def f64(x: Any) -> np.ndarray:
    """A float64 copy of an array, a list or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)


def close(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """|actual − expected| ≤ atol + rtol·|expected| for two scalars (tensors, numpy or Python numbers)."""
    actual, expected = float(f64(actual)), float(f64(expected))
    return abs(actual - expected) <= atol + rtol * abs(expected)


# --- distributions ---------------------------------------------------------------------------------------


def log_softmax(z: Any, temperature: float = 1.0) -> np.ndarray:
    """log softmax(z/T) per row via log-sum-exp: z/T − m − log Σ_j exp(z_j/T − m), m = max_j z_j/T."""
    z = f64(z) / temperature
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))


def softmax(z: Any, temperature: float = 1.0) -> np.ndarray:
    """Hinton et al. 2015: q_i = exp(z_i/T) / Σ_j exp(z_j/T), per row."""
    return np.exp(log_softmax(z, temperature))


def entropy(p: Any) -> np.ndarray:
    """Shannon entropy in nats per row, H(p) = −Σ_i p_i log p_i, with 0 log 0 = 0."""
    p = f64(p)
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)


def kl(p: Any, q: Any) -> np.ndarray:
    """KL(p ‖ q) = Σ_i p_i (log p_i − log q_i) over the last axis, with 0 log 0 = 0."""
    p, q = f64(p), f64(q)
    safe_p = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * (np.log(safe_p) - np.log(q)), 0.0).sum(axis=-1)


# --- Hinton's KD, cross-entropy, hints ---------------------------------------------------------------------


def kd_per_sample(student_logits: Any, teacher_logits: Any, temperature: float) -> np.ndarray:
    """KL(softmax(t/T) ‖ softmax(s/T)) per row [B], without the T² factor, in log space."""
    log_p = log_softmax(teacher_logits, temperature)
    log_q = log_softmax(student_logits, temperature)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float) -> float:
    """Hinton et al. 2015: T² · (1/B) Σ_b KL(softmax(t_b/T) ‖ softmax(s_b/T)) (batchmean)."""
    return float(temperature**2 * kd_per_sample(student_logits, teacher_logits, temperature).mean())


def kd_loss_from_probs(student_logits: Any, teacher_probs: Any, temperature: float) -> float:
    """T² · (1/B) Σ_b KL(p_b ‖ softmax(s_b/T)) for a given target distribution p [B, C]."""
    return float(temperature**2 * kl(teacher_probs, softmax(student_logits, temperature)).mean())


def cross_entropy(logits: Any, targets: Any) -> float:
    """(1/B) Σ_b −log softmax(z_b)[y_b]."""
    targets = f64(targets).astype(np.int64)
    return float(-log_softmax(logits)[np.arange(len(targets)), targets].mean())


def mse(a: Any, b: Any) -> float:
    """FitNets' hint loss as mean squared error: (1/(B·D)) Σ_b Σ_d (a_bd − b_bd)²."""
    return float(((f64(a) - f64(b)) ** 2).mean())


def huber(x: Any) -> np.ndarray:
    """Smooth-L1 with δ = 1, elementwise: ½x² where |x| < 1, |x| − ½ elsewhere."""
    x = f64(x)
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def multi_teacher_soft_targets(teacher_logits: Sequence[Any], temperature: float,
                               weights: Sequence[float] | None = None) -> np.ndarray:
    """You et al. 2017 / Hinton et al. 2015: p̄ = Σ_k w_k softmax(z_k/T) / Σ_k w_k (uniform w by default)."""
    weights = np.ones(len(teacher_logits)) if weights is None else f64(weights)
    return sum(w * softmax(z, temperature) for w, z in zip(weights, teacher_logits)) / weights.sum()


def mutual_learning(cohort: Sequence[Any], targets: Any, temperature: float = 1.0) -> list[float]:
    """Zhang et al. 2018: L_k = CE(z_k, y) + (1/(K−1)) Σ_{j≠k} T² · KL(p_j ‖ p_k), p = softmax(z/T)."""
    losses = []
    for k, logits in enumerate(cohort):
        peers = [kd_loss(logits, other, temperature) for j, other in enumerate(cohort) if j != k]
        losses.append(cross_entropy(logits, targets) + float(np.mean(peers)))
    return losses


# --- feature- and relation-based losses -----------------------------------------------------------------


def adaptive_avg_pool(q: Any, size: tuple[int, int]) -> np.ndarray:
    """PyTorch's adaptive average pooling of [B, H, W] to [B, h, w]: output cell i averages input
    rows floor(i·H/h) .. ceil((i+1)·H/h) (likewise for columns)."""
    q = f64(q)
    batch, height, width = q.shape
    out = np.zeros((batch, *size))
    for i in range(size[0]):
        r0, r1 = (i * height) // size[0], -((-(i + 1) * height) // size[0])
        for j in range(size[1]):
            c0, c1 = (j * width) // size[1], -((-(j + 1) * width) // size[1])
            out[:, i, j] = q[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def attention_transfer(student_maps: Sequence[Any], teacher_maps: Sequence[Any], p: float = 2.0,
                       reduction: str = "mean") -> float:
    """Zagoruyko & Komodakis 2017: per stage Q = Σ_c |A_c|^p [B, H, W], the larger Q pooled to the smaller
    size, flattened and L2-normalised per sample, Q̂ = Q/‖Q‖₂; then summed over stages
    "mean": (1/(B·N)) Σ_b Σ_n (Q̂_s − Q̂_t)²,  "sum": (1/B) Σ_b ‖Q̂_s,b − Q̂_t,b‖₂²."""
    total = 0.0
    for student, teacher in zip(student_maps, teacher_maps):
        q_s, q_t = (np.abs(f64(student)) ** p).sum(axis=1), (np.abs(f64(teacher)) ** p).sum(axis=1)
        size = (min(q_s.shape[1], q_t.shape[1]), min(q_s.shape[2], q_t.shape[2]))
        q_s, q_t = adaptive_avg_pool(q_s, size), adaptive_avg_pool(q_t, size)
        q_s, q_t = q_s.reshape(len(q_s), -1), q_t.reshape(len(q_t), -1)
        q_s = q_s / np.linalg.norm(q_s, axis=1, keepdims=True)
        q_t = q_t / np.linalg.norm(q_t, axis=1, keepdims=True)
        squared = (q_s - q_t) ** 2
        total += squared.mean() if reduction == "mean" else squared.sum(axis=1).mean()
    return float(total)


def similarity_preserving(student: Any, teacher: Any) -> float:
    """Tung & Mori 2019: G = F Fᵀ [B, B] of the flattened activations, rows L2-normalised,
    L = (1/B²) ‖G̃_s − G̃_t‖²_F."""
    f_s, f_t = f64(student), f64(teacher)
    f_s, f_t = f_s.reshape(len(f_s), -1), f_t.reshape(len(f_t), -1)
    g_s, g_t = f_s @ f_s.T, f_t @ f_t.T
    g_s = g_s / np.linalg.norm(g_s, axis=1, keepdims=True)
    g_t = g_t / np.linalg.norm(g_t, axis=1, keepdims=True)
    return float(((g_s - g_t) ** 2).sum() / len(f_s) ** 2)


def rkd(student: Any, teacher: Any) -> tuple[float, float]:
    """Park et al. 2019, with loops over every pair and triplet: (L_D, L_A).

    ψ_D(i, j) = ‖e_i − e_j‖ / μ, μ the mean of the B(B−1) off-diagonal distances; L_D = mean over all B²
    pairs of Huber(ψ_D^s − ψ_D^t). ψ_A(i, j, k) = cos of the angle at e_j between e_i and e_k (0 when
    degenerate); L_A = mean over all B³ triplets of Huber(ψ_A^s − ψ_A^t)."""
    def distances(e: np.ndarray) -> np.ndarray:
        b = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(b)] for i in range(b)])
        return d / d[~np.eye(b, dtype=bool)].mean()

    def cosines(e: np.ndarray) -> np.ndarray:
        b, out = len(e), []
        for j in range(b):
            for i in range(b):
                for k in range(b):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out.append(0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv))
        return np.array(out)

    s, t = f64(student), f64(teacher)
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    return float(huber(distances(s) - distances(t)).mean()), float(huber(cosines(s) - cosines(t)).mean())


def pkt(student: Any, teacher: Any, eps: float = 1e-7) -> float:
    """Passalis & Tefas 2018: K_ij = (cos(x_i, x_j) + 1)/2, P_ij = K_ij / Σ_j K_ij,
    L = (1/B²) Σ_i Σ_j P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))."""
    def probabilities(f: np.ndarray) -> np.ndarray:
        f = f.reshape(len(f), -1)
        unit = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        kernel = (unit @ unit.T + 1) / 2
        return kernel / kernel.sum(axis=1, keepdims=True)

    p_s, p_t = probabilities(f64(student)), probabilities(f64(teacher))
    return float((p_t * np.log((p_t + eps) / (p_s + eps))).mean())


# --- logit-based methods ---------------------------------------------------------------------------------


def dkd(student_logits: Any, teacher_logits: Any, target: Any, alpha: float = 1.0, beta: float = 8.0,
        temperature: float = 4.0) -> tuple[float, np.ndarray, np.ndarray]:
    """Zhao et al. 2022, sample by sample: (loss, TCKD [B], NCKD [B]).

    p = softmax(z/T); b = [p_y, 1 − p_y]; p̂_i = p_i / (1 − p_y) over the classes i ≠ y.
    TCKD = KL(b^t ‖ b^s), NCKD = KL(p̂^t ‖ p̂^s), loss = T² (α · mean TCKD + β · mean NCKD)."""
    p_s, p_t = softmax(student_logits, temperature), softmax(teacher_logits, temperature)
    tckd, nckd = [], []
    for row, y in enumerate(f64(target).astype(np.int64).tolist()):
        b_s = np.array([p_s[row, y], 1 - p_s[row, y]])
        b_t = np.array([p_t[row, y], 1 - p_t[row, y]])
        tckd.append(kl(b_t, b_s))
        others = [c for c in range(p_s.shape[1]) if c != y]
        nckd.append(kl(p_t[row, others] / b_t[1], p_s[row, others] / b_s[1]))
    tckd, nckd = np.array(tckd), np.array(nckd)
    return float(temperature**2 * (alpha * tckd.mean() + beta * nckd.mean())), tckd, nckd


def dist(student_logits: Any, teacher_logits: Any, beta: float = 1.0, gamma: float = 1.0,
         temperature: float = 1.0) -> float:
    """Huang et al. 2022: Y = softmax(Z/T), ρ the Pearson correlation (numpy's corrcoef);
    L = T² (β (1 − mean_b ρ(Y^s_b,:, Y^t_b,:)) + γ (1 − mean_c ρ(Y^s_:,c, Y^t_:,c)))."""
    y_s, y_t = softmax(student_logits, temperature), softmax(teacher_logits, temperature)
    inter = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s, y_t)])
    intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s.T, y_t.T)])
    return float(temperature**2 * (beta * inter + gamma * intra))


def standardize(z: Any) -> np.ndarray:
    """Logit standardisation (Sun et al. 2024): (z − mean) / (std + 1e-7) per row, std with Bessel's correction."""
    z = f64(z)
    return (z - z.mean(axis=-1, keepdims=True)) / (z.std(axis=-1, ddof=1, keepdims=True) + 1e-7)


def crd_nce(anchors: Any, positives: Any, negatives: Any, valid: Any, temperature: float, n_data: int,
            normalizer: float) -> float:
    """One direction of CRD's NCE loss (Tian et al. 2020), written per anchor and per negative with loops.

    h(v, m) = exp(v·m/τ)/Z, K_b = valid negatives of anchor b, P_n = 1/N:
    L = −mean_b [log(h⁺/(h⁺ + K_b/N)) + Σ_valid log((K_b/N)/(h⁻ + K_b/N))]
    """
    anchors, positives, negatives, valid = f64(anchors), f64(positives), f64(negatives), np.asarray(valid)
    total = 0.0
    for b in range(len(anchors)):
        noise = max(valid[b].sum(), 1) / n_data
        h_pos = np.exp(anchors[b] @ positives[b] / temperature) / normalizer
        total += np.log(h_pos / (h_pos + noise))
        for k in range(len(negatives)):
            if valid[b, k]:
                h_neg = np.exp(anchors[b] @ negatives[k] / temperature) / normalizer
                total += np.log(noise / (h_neg + noise))
    return -total / len(anchors)


# --- text Transformers ------------------------------------------------------------------------------------


def hidden_cosine(student_states: Any, teacher_states: Any, mask: Any) -> float:
    """DistilBERT's cosine loss: the mean over real tokens (b, i) of 1 − ⟨s, t⟩ / (‖s‖ ‖t‖), token by token."""
    s, t, m = f64(student_states), f64(teacher_states), np.asarray(mask, dtype=bool)
    terms = [1.0 - s[b, i] @ t[b, i] / (np.linalg.norm(s[b, i]) * np.linalg.norm(t[b, i]))
             for b in range(s.shape[0]) for i in range(s.shape[1]) if m[b, i]]
    return float(np.mean(terms))


def relation_kl(student_a: Any, student_b: Any, teacher_a: Any, teacher_b: Any, mask: Any, heads: int) -> float:
    """MiniLM's KL between relation distributions, one head, one token, one sentence at a time:
    R_r,i(j) = exp(a_r,i·b_r,j/√d) / Σ_j' exp(a_r,i·b_r,j'/√d) over real tokens j; the mean over heads and real
    tokens i of Σ_j R^t log(R^t / R^s)."""
    m = np.asarray(mask, dtype=bool)

    def relations(a: np.ndarray, b: np.ndarray, batch: int, head: int, i: int) -> np.ndarray:
        size = a.shape[-1] // heads
        part = slice(head * size, (head + 1) * size)
        real = np.flatnonzero(m[batch])
        scores = np.array([a[batch, i, part] @ b[batch, j, part] for j in real]) / np.sqrt(size)
        return np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()

    sa, sb, ta, tb = (f64(x) for x in (student_a, student_b, teacher_a, teacher_b))
    terms = []
    for batch in range(m.shape[0]):
        for head in range(heads):
            for i in np.flatnonzero(m[batch]):
                p, q = relations(ta, tb, batch, head, i), relations(sa, sb, batch, head, i)
                terms.append(float(np.sum(p * np.log(p / q))))
    return float(np.mean(terms))
