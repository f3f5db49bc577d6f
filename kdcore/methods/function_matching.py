"""Function matching (Beyer et al. 2022): same views for teacher and student, mixup, KD only."""

from __future__ import annotations

from kdcore.errors import ConfigError
from kdcore.methods.base import Method, MethodSpec, common_formula, num, param

SPEC = MethodSpec(
    "function_matching", "Function matching",
    "Beyer, Zhai, Royer, Markeeva, Anil & Kolesnikov 2022, \"Knowledge distillation: A good teacher is "
    "patient and consistent\"",
    "The student should match the teacher's function everywhere inputs may lie, not just on the training "
    "images: teacher and student see exactly the same view of every batch (the teacher runs on each batch, "
    "never from precomputed labels), and pairs of images are blended with mixup to widen the inputs seen. "
    "Only the KD term is used (mixed images have no single label). Benefits from long training.",
    {"mixup_alpha": param(1.0, 0.0, 10.0, "mixup strength: the blend weight λ ~ Beta(α, α); 0 turns mixup off")},
    uses_labels=False, needs_teacher_forward=True,
    not_for_text="it mixes inputs (mixup), and token ids cannot be mixed; for more text use transfer=augment:N",
)


class FunctionMatching(Method):
    spec = SPEC

    def check(self, config):
        if config.weights.kd <= 0:
            raise ConfigError("method function_matching learns from the KD term only; weights.kd must be > 0")

    def objective(self, build):
        from kdcore.methods.objective import Objective

        return Objective(build, prepare_batch=mixup(build.params["mixup_alpha"], build.config.seed))

    def formula(self, weights, temperature, params):
        if params["mixup_alpha"] > 0:
            t = num(temperature)
            return common_formula(self.spec, weights, temperature, teacher=rf"\sigma(z_t(\tilde x)/{t})",
                                  student=rf"\sigma(z_s(\tilde x)/{t})")
        return common_formula(self.spec, weights, temperature)

    def legend(self, params):
        if not params.get("mixup_alpha"):
            return []
        return [r"$\tilde x$ is the batch mixed with a shuffled copy of itself (mixup), seen by both networks"]


def mixup(alpha: float, seed: int):
    """x → λ·x + (1 − λ)·x[perm], one λ ~ Beta(α, α) per batch (Zhang et al. 2018), seeded by the run."""
    import random

    import torch

    if alpha <= 0:
        return None
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)

    def prepare(x):
        lam = rng.betavariate(alpha, alpha)
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        return lam * x + (1.0 - lam) * x[perm]
    return prepare


METHOD = FunctionMatching()
