"""Multiple teachers (Hinton et al. 2015; You et al. 2017): distil from the average of several teachers."""

from __future__ import annotations

from kdcore.errors import ConfigError
from kdcore.methods.base import Method, MethodSpec, common_formula, num, param

SPEC = MethodSpec(
    "multi_teacher", "Multiple teachers",
    "Hinton et al. 2015 (ensembles); You, Xu, Xu & Tao 2017, \"Learning from Multiple Teacher Networks\"",
    "Several teachers of the configured architecture are trained from different seeds (teacher.seed, "
    "teacher.seed+1, ...), and the student distils from the average of their softened distributions, which "
    "is usually better calibrated than any single teacher. The KD term uses that average; everything else "
    "is as in KD.",
    {"teachers": param(3, 2, 8, "how many teachers (each trained, or reused from the cache, with its own seed)",
                       integer=True)},
    ensemble_teacher=True,
)


class MultiTeacher(Method):
    spec = SPEC

    def check(self, config):
        if config.teacher.checkpoint:
            raise ConfigError("method multi_teacher trains its teachers from different seeds; "
                              "teacher.checkpoint would give one teacher only (unset it)")

    def teacher_seeds(self, config):
        from kdcore.methods.base import with_defaults

        count = int(with_defaults(self.spec, config.method_params)["teachers"])
        return [config.teacher.seed + k for k in range(count)]

    def combine_teachers(self, teachers, config):
        return TeacherEnsemble.of(teachers, config.temperature)

    def formula(self, weights, temperature, params):
        k, t = int(params["teachers"]), num(temperature)
        teacher = rf"\tfrac{{1}}{{{k}}}\textstyle\sum_{{k=1}}^{{{k}}}\sigma(z_{{t_k}}/{t})"
        return common_formula(self.spec, weights, temperature, teacher=teacher)

    def legend(self, params):
        return [r"$z_{t_k}$ are the logits of teacher $k$, trained from its own seed"]


class TeacherEnsemble:
    """Several frozen teachers acting as one (an `nn.Module`, built lazily so this file imports no torch).

    Its logits are T·log p̄ with p̄ the teachers' averaged softmax(z/T), so softmax(logits / T) = p̄
    exactly and every consumer of teacher logits (precomputed soft labels, kd_loss, validation KL)
    works unchanged at the run's temperature T. At other temperatures it is only an approximation
    of the ensemble. Features and stages are the first teacher's.
    """

    @staticmethod
    def of(teachers, temperature: float):
        from torch import nn

        class _Ensemble(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.members = nn.ModuleList(teachers)
                self.temperature = temperature
                self.feature_dim = getattr(teachers[0], "feature_dim", None)
                self.num_classes = getattr(teachers[0], "num_classes", None)

            def forward_features(self, x):
                outputs = [member.forward_features(x) for member in self.members]
                return ensemble_logits([out[0] for out in outputs], self.temperature), outputs[0][1], outputs[0][2]

            def forward(self, x):
                return self.forward_features(x)[0]

        if not teachers:
            raise ValueError("a teacher ensemble needs at least one teacher")
        return _Ensemble()


def ensemble_logits(teacher_logits, temperature: float):
    """T · log(mean_k softmax(z_k / T)), in log space (finite for any finite logits): [B, C].

    softmax(ensemble_logits / T) = `losses.multi_teacher_soft_targets(teacher_logits, T)`.
    """
    import torch
    import torch.nn.functional as F

    log_probs = torch.stack([F.log_softmax(z.float() / temperature, dim=-1) for z in teacher_logits])
    log_mean = torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(teacher_logits))))
    return temperature * log_mean


METHOD = MultiTeacher()
