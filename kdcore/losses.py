"""Distillation losses as pure tensor functions.

Shapes: logits are [B, C] (batch, classes); features are [B, D]; targets are int64 [B].
Every function returns a scalar averaged over the batch unless its docstring says otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _at_least_float32(x: Tensor) -> Tensor:
    """float16/bfloat16 (autocast) → float32; float64 stays float64, so gradcheck in double works."""
    return x if x.dtype == torch.float64 else x.float()


def soft_targets(logits: Tensor, temperature: float) -> Tensor:
    """Softmax with temperature (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    q_i = exp(z_i / T) / Σ_j exp(z_j / T). Higher T spreads the mass over more classes.
    logits [B, C] → probabilities [B, C]. Computed in float32 at least, stable for large logits.
    """
    return torch.softmax(_at_least_float32(logits) / temperature, dim=-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's distillation term: T² · KL(softmax(t/T) ‖ softmax(s/T)).

    KL(p‖q) = Σ_i p_i (log p_i − log q_i), summed over classes and averaged over the batch
    (PyTorch's reduction='batchmean'). The T² factor keeps the gradient's scale independent of T,
    since ∂KL/∂s shrinks as 1/T². Uses log-softmax on both sides, so large logits stay finite.
    student_logits, teacher_logits [B, C] → scalar.
    """
    # the per-sample sum, then the mean: what kl_div(..., "batchmean") computes, but with a batching
    # rule under torch.vmap (stacked students), where kl_div falls back to a slow loop
    return kd_loss_per_sample(student_logits, teacher_logits, temperature).mean() * (temperature**2)


def kd_loss_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) per sample, without the T² factor: [B]. Used for validation KL."""
    log_q = F.log_softmax(_at_least_float32(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(_at_least_float32(teacher_logits) / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def labeled_cross_entropy(logits: Tensor, targets: Tensor, labeled: Tensor | None = None) -> Tensor:
    """Cross-entropy over the labelled samples of a batch only (semi-supervised distillation).

    CE = Σ_b m_b · (−log softmax(z_b)[y_b]) / max(Σ_b m_b, 1), with m the labelled mask: the mean over
    labelled samples, and 0 (not NaN) for a batch without any. labeled None: every sample (plain CE).
    Written without data-dependent branches, so it batches under torch.vmap.
    logits [B, C], targets int64 [B], labeled bool [B] → scalar.
    """
    logits = _at_least_float32(logits)
    if labeled is None:
        return F.cross_entropy(logits, targets)
    mask = labeled.to(logits.dtype)
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    return (per_sample * mask).sum() / mask.sum().clamp(min=1.0)


def hint_loss(projected_student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets").

    ½‖W·f_s − f_t‖² in the paper; here the mean squared error over features and batch,
    MSE = (1 / (B·D)) Σ_b Σ_d (r(f_s)_bd − f_t,bd)², where r is a learned projector from the
    student's feature size to the teacher's (trained with the student; see `kdcore.models`).
    projected_student_features, teacher_features [B, D_teacher] → scalar.
    """
    return F.mse_loss(_at_least_float32(projected_student_features), _at_least_float32(teacher_features))


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Logit matching (Ba & Caruana 2014; Tang et al. 2019): the mean squared difference of the logits,
    (1 / (B·C)) Σ_b Σ_c (z_s,bc − z_t,bc)². student_logits, teacher_logits [B, C] → scalar."""
    return F.mse_loss(_at_least_float32(student_logits), _at_least_float32(teacher_logits))


def distillation_loss(
    student_logits: Tensor,
    targets: Tensor,
    *,
    teacher_logits: Tensor | None,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    feature_weight: float = 0.0,
    projected_student_features: Tensor | None = None,
    teacher_features: Tensor | None = None,
) -> dict[str, Tensor]:
    """The weighted objective, returned as named parts for logging.

    loss = ce_weight · CE(s, y) + kd_weight · T²·KL(softmax(t/T) ‖ softmax(s/T)) + feature_weight · MSE(r(f_s), f_t)
    Parts with zero weight are skipped (not computed) and reported as 0. Returns
    {"loss", "ce", "kd", "feature"}, each a scalar tensor; only "loss" carries the graph you need.
    """
    if kd_weight > 0 and teacher_logits is None:
        raise ValueError("distillation_loss: kd_weight > 0 needs teacher_logits")
    if feature_weight > 0 and (projected_student_features is None or teacher_features is None):
        raise ValueError("distillation_loss: feature_weight > 0 needs projected_student_features and teacher_features")
    zero = student_logits.new_zeros((), dtype=torch.float32)
    ce = F.cross_entropy(_at_least_float32(student_logits), targets) if ce_weight > 0 else zero
    kd = kd_loss(student_logits, teacher_logits, temperature) if kd_weight > 0 else zero
    feature = (
        hint_loss(projected_student_features, teacher_features)
        if feature_weight > 0
        else zero
    )
    loss = ce_weight * ce + kd_weight * kd + feature_weight * feature
    return {"loss": loss, "ce": ce, "kd": kd, "feature": feature}


# --- feature- and relation-based methods (each kdcore/methods/<name>.py builds its objective from these) ---


def _attention_map(feature_map: Tensor, p: float) -> Tensor:
    """Q = Σ_c |A_c|^p over channels: [B, C, H, W] → [B, H, W] (float32 at least)."""
    return _at_least_float32(feature_map).abs().pow(p).sum(dim=1)


def attention_transfer_loss(student_maps: list[Tensor], teacher_maps: list[Tensor], p: float = 2,
                            reduction: str = "mean") -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

    Per matched stage, the spatial attention map Q = Σ_c |A_c|^p of a feature map A [B, C, H, W] is
    flattened to [B, H·W] and L2-normalised per sample, Q̂ = Q / ‖Q‖₂. Channel counts may differ.
    When the two maps' spatial sizes differ, the larger Q (before normalising) is adaptive-average-
    pooled to the smaller size. Per stage, with N = H·W positions after that:

        reduction="mean":  (1 / (B·N)) Σ_b Σ_n (Q̂_s,bn − Q̂_t,bn)²   (the authors' code, where β=1000 was tuned)
        reduction="sum":   (1 / B)     Σ_b ‖Q̂_s,b − Q̂_t,b‖₂²        (the paper's squared distance, in [0, 4])

    and the loss is the sum over stages. The paper writes β/2 · Σ_j ‖Q̂_s − Q̂_t‖_p and sets β to 10³
    "divided by number of elements in attention map and batch size"; its code (and RepDistiller) takes
    the mean of squares over batch and positions, so "mean" (the default) is the scale β=1000 was set for.
    student_maps, teacher_maps: equally long lists of [B, C_s, H, W] / [B, C_t, H', W'] → scalar.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"attention transfer needs equally many student and teacher maps (≥1), "
                         f"got {len(student_maps)} and {len(teacher_maps)}")
    total = student_maps[0].new_zeros((), dtype=torch.float32)
    for student_map, teacher_map in zip(student_maps, teacher_maps):
        if student_map.dim() != 4 or teacher_map.dim() != 4:
            raise ValueError(f"attention transfer needs 4-D feature maps [B, C, H, W], got shapes "
                             f"{tuple(student_map.shape)} and {tuple(teacher_map.shape)}")
        q_s, q_t = _attention_map(student_map, p), _attention_map(teacher_map, p)
        size = (min(q_s.shape[1], q_t.shape[1]), min(q_s.shape[2], q_t.shape[2]))
        q_s = F.adaptive_avg_pool2d(q_s.unsqueeze(1), size).flatten(1) if q_s.shape[1:] != size else q_s.flatten(1)
        q_t = F.adaptive_avg_pool2d(q_t.unsqueeze(1), size).flatten(1) if q_t.shape[1:] != size else q_t.flatten(1)
        squared = (F.normalize(q_s, dim=1) - F.normalize(q_t, dim=1)).pow(2)
        total = total + (squared.mean() if reduction == "mean" else squared.sum(dim=1).mean())
    return total


def _as_list(x: Tensor | list[Tensor]) -> list[Tensor]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def similarity_preserving_loss(student_features: Tensor | list[Tensor], teacher_features: Tensor | list[Tensor]) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation").

    Each activation A [B, ...] is flattened to F [B, D]; G = F Fᵀ [B, B] is the batch's similarity
    matrix and G̃ its row-wise L2-normalised form, G̃_i = G_i / ‖G_i‖₂. Per matched pair of layers
    L = (1 / B²) ‖G̃_s − G̃_t‖²_F; lists of layers are summed. D may differ between student and teacher.
    A batch of 1 is allowed and gives 0 (both G̃ are [[1]]).
    student_features, teacher_features: [B, ...] tensors or equally long lists of them → scalar.
    """
    students, teachers = _as_list(student_features), _as_list(teacher_features)
    if len(students) != len(teachers) or not students:
        raise ValueError(f"similarity preserving needs equally many student and teacher activations (≥1), "
                         f"got {len(students)} and {len(teachers)}")
    total = students[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(students, teachers):
        batch = student.shape[0]
        f_s = _at_least_float32(student).reshape(batch, -1)
        f_t = _at_least_float32(teacher).reshape(batch, -1)
        g_s, g_t = F.normalize(f_s @ f_s.t(), dim=1), F.normalize(f_t @ f_t.t(), dim=1)
        total = total + (g_s - g_t).pow(2).sum() / batch**2
    return total


def _pairwise_distances(embeddings: Tensor) -> Tensor:
    """Euclidean distances [B, B], diagonal 0; exact differences, not ‖a‖² + ‖b‖² − 2ab (which cancels),
    and a finite gradient where two points coincide."""
    return torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")


def _triplet_cosines(embeddings: Tensor) -> Tensor:
    """cos ∠(e_i, e_j, e_k) = ⟨(e_i − e_j)/‖·‖, (e_k − e_j)/‖·‖⟩ for all B³ triplets [B³].

    Degenerate triplets (i = j or k = j) give 0."""
    differences = embeddings.unsqueeze(0) - embeddings.unsqueeze(1)  # [j, i, D]: e_i − e_j
    norms = differences.norm(dim=2, keepdim=True)
    # a zero difference has no direction: give it 0 and no gradient (F.normalize's would be ~1/eps)
    defined = norms > 1e-12
    directions = torch.where(defined, differences / torch.where(defined, norms, torch.ones_like(norms)), 0.0)
    return torch.bmm(directions, directions.transpose(1, 2)).reshape(-1)


def rkd_loss_parts(student_emb: Tensor, teacher_emb: Tensor) -> dict[str, Tensor]:
    """The two unweighted terms of relational KD (Park et al., CVPR 2019, "Relational Knowledge Distillation").

    Embeddings are flattened to [B, D] (D may differ between student and teacher).
    distance: ψ_D(i, j) = ‖e_i − e_j‖₂ / μ with μ the mean over the B(B−1) off-diagonal pairs;
              L_D = mean over all B² pairs of Huber(ψ_D^s − ψ_D^t) (smooth-L1, δ=1; diagonal pairs are 0 − 0).
    angle:    ψ_A(i, j, k) = cos ∠e_i e_j e_k via unit difference vectors;
              L_A = mean over all B³ triplets of Huber(ψ_A^s − ψ_A^t) (degenerate triplets are 0 − 0).
    Averaging over all pairs/triplets follows the authors' code. Needs B ≥ 2 (raises ValueError
    otherwise); with B = 2 every triplet is degenerate and the angle term is 0.
    Returns {"distance", "angle"}, unweighted scalars.
    """
    batch = student_emb.shape[0]
    if batch < 2:
        raise ValueError(f"RKD compares pairs of samples: needs a batch of at least 2, got {batch}")
    student = _at_least_float32(student_emb).reshape(batch, -1)
    teacher = _at_least_float32(teacher_emb).reshape(batch, -1)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=student.device)
    d_s, d_t = _pairwise_distances(student), _pairwise_distances(teacher)
    d_s = d_s / d_s[off_diagonal].mean().clamp_min(1e-12)
    d_t = d_t / d_t[off_diagonal].mean().clamp_min(1e-12)
    distance = F.smooth_l1_loss(d_s, d_t)
    angle = F.smooth_l1_loss(_triplet_cosines(student), _triplet_cosines(teacher))
    return {"distance": distance, "angle": angle}


def rkd_loss(student_emb: Tensor, teacher_emb: Tensor, distance_weight: float = 25, angle_weight: float = 50) -> Tensor:
    """Relational KD: distance_weight · L_D + angle_weight · L_A (see `rkd_loss_parts`).

    Defaults 25 and 50 are the paper's. student_emb [B, D_s], teacher_emb [B, D_t] → scalar.
    Needs B ≥ 3 when angle_weight > 0 (an angle needs three samples), else B ≥ 2; raises ValueError.
    """
    if angle_weight > 0 and student_emb.shape[0] < 3:
        raise ValueError(f"RKD's angle term needs a batch of at least 3, got {student_emb.shape[0]}")
    parts = rkd_loss_parts(student_emb, teacher_emb)
    return distance_weight * parts["distance"] + angle_weight * parts["angle"]


def _cosine_kernel_probabilities(features: Tensor, eps: float) -> Tensor:
    unit = features / (features.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student_features: Tensor, teacher_features: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, "Learning Deep Representations
    with Probabilistic Knowledge Transfer").

    Features are flattened to [B, D] and unit-normalised (x / (‖x‖ + eps)); the cosine kernel
    K_ij = (cos(x_i, x_j) + 1) / 2 is turned into conditional probabilities P_ij = K_ij / Σ_j K_ij.
    L = (1 / B²) Σ_i Σ_j P^t_ij · log((P^t_ij + eps) / (P^s_ij + eps)) — KL(teacher ‖ student) averaged
    over all B² entries, diagonal included, exactly as the authors' reference code.
    D may differ between student and teacher. Identical features give 0; a batch of 1 gives 0.
    student_features [B, D_s], teacher_features [B, D_t] → scalar.
    """
    batch = student_features.shape[0]
    p_s = _cosine_kernel_probabilities(_at_least_float32(student_features).reshape(batch, -1), eps)
    p_t = _cosine_kernel_probabilities(_at_least_float32(teacher_features).reshape(batch, -1), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# --- logit-based methods -------------------------------------------------------------------------------


def _target_split(logits: Tensor, target: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """log p_target [B], log p_non-target [B] of softmax(z/T), and the non-target logits/T [B, C−1]."""
    scaled = _at_least_float32(logits) / temperature
    batch, classes = scaled.shape
    target_mask = F.one_hot(target, classes).bool()
    log_probs = F.log_softmax(scaled, dim=1)
    log_target = log_probs[target_mask]
    others = scaled[~target_mask].reshape(batch, classes - 1)
    log_others = torch.logsumexp(others, dim=1) - torch.logsumexp(scaled, dim=1)
    return log_target, log_others, others


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample TCKD and NCKD of decoupled KD (Zhao et al., CVPR 2022), without the T² factor.

    With p = softmax(z/T): b = [p_target, 1 − p_target] (binary) and p̂ = softmax over the C−1
    non-target logits (the target removed, which is what the paper's masking approximates).
        TCKD = KL(b^t ‖ b^s),   NCKD = KL(p̂^t ‖ p̂^s)
    The paper's identity holds exactly: KL(p^t ‖ p^s) = TCKD + (1 − p^t_target) · NCKD.
    Everything stays in log space, so logits of ±1e4 stay finite. Needs C ≥ 2.
    student_logits, teacher_logits [B, C], target int64 [B] → (tckd [B], nckd [B]).
    """
    if student_logits.shape[1] < 2:
        raise ValueError("DKD splits target from non-target classes: needs at least 2 classes")
    log_t_s, log_o_s, others_s = _target_split(student_logits, target, temperature)
    log_t_t, log_o_t, others_t = _target_split(teacher_logits, target, temperature)
    tckd = log_t_t.exp() * (log_t_t - log_t_s) + log_o_t.exp() * (log_o_t - log_o_s)
    log_hat_s, log_hat_t = F.log_softmax(others_s, dim=1), F.log_softmax(others_t, dim=1)
    nckd = (log_hat_t.exp() * (log_hat_t - log_hat_s)).sum(dim=1)
    return tckd, nckd


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 8.0,
             temperature: float = 4.0) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation").

    L = α · T² · mean_b TCKD_b + β · T² · mean_b NCKD_b (batchmean), TCKD/NCKD as in `dkd_terms`.
    Defaults α=1, β=8, T=4 are the paper's CIFAR-100 settings. The paper's linear warm-up of the
    whole term (first 20 epochs) is applied by the caller, not here.
    student_logits, teacher_logits [B, C], target int64 [B] → scalar.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return (alpha * tckd.mean() + beta * nckd.mean()) * temperature**2


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of matching rows of a and b [N, M] → [N] (0 for a constant row)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return F.cosine_similarity(a, b, dim=1, eps=eps)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher").

    With Y = softmax(Z / T) [B, C] for student and teacher and ρ the Pearson correlation:
        inter-class = T² · (1 − (1/B) Σ_b ρ(Y^s_b,:, Y^t_b,:))   (each sample's class distribution, rows)
        intra-class = T² · (1 − (1/C) Σ_c ρ(Y^s_:,c, Y^t_:,c))   (each class across the batch, columns)
    L = β · inter + γ · intra. ρ uses the cosine of mean-centred vectors with eps=1e-8, as the
    authors' code. Identical inputs give 0. Needs B ≥ 2 (a column of one sample has no correlation).
    student_logits, teacher_logits [B, C] → scalar.
    """
    if student_logits.shape[0] < 2:
        raise ValueError("DIST correlates each class across the batch: needs a batch of at least 2, got 1")
    y_s = soft_targets(student_logits, temperature)
    y_t = soft_targets(teacher_logits, temperature)
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def multi_teacher_soft_targets(teacher_logits: list[Tensor], temperature: float,
                               weights: list[float] | None = None) -> Tensor:
    """The teachers' averaged softened distribution (the ensemble target of Hinton et al. 2015;
    You et al., KDD 2017, "Learning from Multiple Teacher Networks").

    p̄ = Σ_k w_k · softmax(z_k / T), with w uniform by default and normalised to sum 1 otherwise.
    teacher_logits: K tensors [B, C] → probabilities [B, C] (float32).
    """
    if not teacher_logits:
        raise ValueError("multi_teacher_soft_targets needs at least one teacher's logits")
    if weights is None:
        weights = [1.0] * len(teacher_logits)
    if len(weights) != len(teacher_logits) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {len(teacher_logits)} non-negative numbers with a positive sum, got {weights}")
    total = float(sum(weights))
    return sum((w / total) * soft_targets(z, temperature) for w, z in zip(weights, teacher_logits))


def kd_loss_from_probs(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """T² · KL(p ‖ softmax(s/T)) for a given target distribution p (e.g. an ensemble's), batchmean.

    Σ_i p_i (log p_i − log q_i), with 0 · log 0 = 0. student_logits [B, C], teacher_probs [B, C] → scalar.
    """
    log_q = F.log_softmax(_at_least_float32(student_logits) / temperature, dim=-1)
    p = _at_least_float32(teacher_probs)
    kl = (torch.xlogy(p, p) - p * log_q).sum(dim=-1).mean()
    return kl * temperature**2


def mutual_learning_loss(logits_list: list[Tensor], targets: Tensor, temperature: float = 1.0) -> list[Tensor]:
    """Deep mutual learning (Zhang et al., CVPR 2018, "Deep Mutual Learning").

    For each network k of the cohort: L_k = CE(z_k, y) + (1/(K−1)) Σ_{j≠k} T² · KL(p_j ‖ p_k),
    p = softmax(z/T), with the peers' p_j detached so L_k trains network k only. The paper uses
    T = 1 (where T² = 1); the T² factor keeps the gradient's scale for other temperatures, as in KD.
    logits_list: K ≥ 2 tensors [B, C]; targets int64 [B] → K scalars (one loss per network).
    """
    if len(logits_list) < 2:
        raise ValueError(f"mutual learning needs a cohort of at least 2 networks, got {len(logits_list)}")
    losses = []
    for k, logits in enumerate(logits_list):
        peers = [kd_loss(logits, other.detach(), temperature) for j, other in enumerate(logits_list) if j != k]
        losses.append(F.cross_entropy(_at_least_float32(logits), targets) + sum(peers) / len(peers))
    return losses


# --- logit standardisation, contrastive and adversarial-temperature methods ----------------------------------


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation").

    ẑ = (z − mean(z)) / (std(z) + eps) per sample, std with Bessel's correction as the authors' code.
    softmax(ẑ/T) depends only on the logits' relations, not their shift or scale.
    logits [B, C] → [B, C] (float32 at least).
    """
    z = _at_least_float32(logits)
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + eps)


def crd_nce_loss(anchors: Tensor, positives: Tensor, negatives: Tensor, valid: Tensor, temperature: float,
                 n_data: int, normalizer: Tensor | float) -> Tensor:
    """One direction of CRD's NCE objective (Tian et al., ICLR 2020, "Contrastive Representation Distillation").

    With the critic h(v, m) = exp(⟨v, m⟩/τ) / Z, the noise probability P_n = 1/N and K the count of valid
    negatives per anchor (K_b = Σ_k valid_bk):
        L = −(1/B) Σ_b [ log( h(v_b, m⁺_b) / (h(v_b, m⁺_b) + K_b·P_n) )
                         + Σ_k valid_bk · log( K_b·P_n / (h(v_b, m_k) + K_b·P_n) ) ]
    anchors [B, D] (unit length), positives [B, D] (each anchor's own example in the other bank),
    negatives [K, D] (shared by the batch), valid bool [B, K] (False masks an anchor's own class)
    → scalar. Z is the normaliser (the paper estimates it once from the first batch).
    """
    anchors = _at_least_float32(anchors)
    count = valid.sum(dim=1).clamp(min=1).to(anchors.dtype)  # K_b
    noise = count / n_data  # K_b · P_n
    positive = torch.exp((anchors * _at_least_float32(positives)).sum(dim=1) / temperature) / normalizer  # [B]
    negative = torch.exp(anchors @ _at_least_float32(negatives).t() / temperature) / normalizer  # [B, K]
    log_positive = torch.log(positive / (positive + noise))
    log_negative = torch.log(noise.unsqueeze(1) / (negative + noise.unsqueeze(1)))
    return -(log_positive + (log_negative * valid).sum(dim=1)).mean()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(x: Tensor, strength: float) -> Tensor:
    """The gradient reversal layer (Ganin & Lempitsky 2015), as CTKD uses it (Li et al., AAAI 2023).

    Forward: the identity. Backward: the gradient times −λ (λ = `strength`), so parameters before it
    ascend the loss that the parameters after it descend.
    """
    return _ReverseGradient.apply(x, strength)


# --- text Transformers: token states and self-attention ---------------------------------------------------


def hidden_cosine_loss(student_states: Tensor, teacher_states: Tensor, mask: Tensor) -> Tensor:
    """DistilBERT's cosine embedding loss (Sanh et al. 2019, "DistilBERT, a distilled version of BERT"):
    the mean over the batch's real tokens of 1 − cos(h_s, h_t), which aligns the directions of the two
    networks' hidden states token by token.

    student_states, teacher_states [B, L, H] (the student's mapped to the teacher's width when they differ);
    mask bool [B, L], True at real tokens.
    """
    cosine = F.cosine_similarity(_at_least_float32(student_states), _at_least_float32(teacher_states), dim=-1, eps=1e-8)
    weights = mask.to(cosine.dtype)
    return ((1.0 - cosine) * weights).sum() / weights.sum().clamp_min(1.0)


def relation_kl_loss(student_a: Tensor, student_b: Tensor, teacher_a: Tensor, teacher_b: Tensor, mask: Tensor,
                     heads: int) -> Tensor:
    """MiniLM's self-attention transfer (Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for
    Task-Agnostic Compression of Pre-Trained Transformers"), on relation heads (MiniLMv2, Wang et al. 2021).

    Each network's a, b [B, L, H] (queries and keys for the attention distributions, values and values
    for the value relation) are split into `heads` relation heads of size d = H/heads, and give for each
    head r and token i the distribution R_r,i = softmax_j(a_r,i · b_r,j / √d) over the sentence's real
    tokens j. The loss is KL(R_t ‖ R_s), summed over j and averaged over heads and the real tokens i:

        L = 1/(heads · Σ mask) · Σ_r Σ_i∈real KL(R^t_r,i ‖ R^s_r,i)

    The widths of the two networks may differ (the split is per network); `mask` bool [B, L].
    """
    student_log = _relation_log_probs(_at_least_float32(student_a), _at_least_float32(student_b), mask, heads)
    teacher_log = _relation_log_probs(_at_least_float32(teacher_a), _at_least_float32(teacher_b), mask, heads)
    kl = (teacher_log.exp() * (teacher_log - student_log)).masked_fill(~mask[:, None, None, :], 0.0).sum(-1)
    rows = mask[:, None, :].to(kl.dtype)  # [B, 1, L]: the real tokens i
    return (kl * rows).sum() / (heads * rows.sum()).clamp_min(1.0)


def _relation_log_probs(a: Tensor, b: Tensor, mask: Tensor, heads: int) -> Tensor:
    """log softmax_j(a_r,i · b_r,j / √d) [B, heads, L, L], padded j masked out."""
    batch, length, width = a.shape
    if width % heads:
        raise ValueError(f"{width}-wide states cannot be split into {heads} relation heads")
    size = width // heads
    a = a.view(batch, length, heads, size).transpose(1, 2)
    b = b.view(batch, length, heads, size).transpose(1, 2)
    scores = a @ b.transpose(-1, -2) / size**0.5
    return scores.masked_fill(~mask[:, None, None, :], float("-inf")).log_softmax(dim=-1)
