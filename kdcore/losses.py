"""Distillation losses as pure tensor functions.

Shapes: logits are [B, C] (batch, classes); features are [B, D]; targets are int64 [B].
Every function returns a scalar averaged over the batch unless its docstring says otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_targets(logits: Tensor, temperature: float) -> Tensor:
    """Softmax with temperature (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    q_i = exp(z_i / T) / Σ_j exp(z_j / T). Higher T spreads the mass over more classes.
    logits [B, C] → probabilities [B, C]. Computed in float32 at least, stable for large logits.
    """
    return torch.softmax(logits.float() / temperature, dim=-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's distillation term: T² · KL(softmax(t/T) ‖ softmax(s/T)).

    KL(p‖q) = Σ_i p_i (log p_i − log q_i), summed over classes and averaged over the batch
    (PyTorch's reduction='batchmean'). The T² factor keeps the gradient's scale independent of T,
    since ∂KL/∂s shrinks as 1/T². Uses log-softmax on both sides, so large logits stay finite.
    student_logits, teacher_logits [B, C] → scalar.
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return kl * (temperature**2)


def kd_loss_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) per sample, without the T² factor: [B]. Used for validation KL."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def hint_loss(projected_student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets").

    ½‖W·f_s − f_t‖² in the paper; here the mean squared error over features and batch,
    MSE = (1 / (B·D)) Σ_b Σ_d (r(f_s)_bd − f_t,bd)², where r is a learned projector from the
    student's feature size to the teacher's (trained with the student; see `kdcore.models`).
    projected_student_features, teacher_features [B, D_teacher] → scalar.
    """
    return F.mse_loss(projected_student_features.float(), teacher_features.float())


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
    zero = student_logits.new_zeros((), dtype=torch.float32)
    ce = F.cross_entropy(student_logits.float(), targets) if ce_weight > 0 else zero
    kd = kd_loss(student_logits, teacher_logits, temperature) if kd_weight > 0 else zero
    feature = (
        hint_loss(projected_student_features, teacher_features)
        if feature_weight > 0 and projected_student_features is not None and teacher_features is not None
        else zero
    )
    loss = ce_weight * ce + kd_weight * kd + feature_weight * feature
    return {"loss": loss, "ce": ce, "kd": kd, "feature": feature}
