"""KD with logit standardisation (Sun et al., CVPR 2024): z-scored logits before the temperature softmax."""

from __future__ import annotations

from kdcore.methods.base import MethodSpec, switch
from kdcore.methods.kd import KD

SPEC = MethodSpec(
    "kd_ls", "KD with logit standardisation",
    "Sun, Ren, Li, Wang & Cao 2024, \"Logit Standardization in Knowledge Distillation\" (CVPR)",
    "Plain KD asks the student to match the teacher's logits up to a shift, and at one shared temperature also "
    "their scale, which a small student may not reach. Logit standardisation z-scores each sample's logits "
    "(subtract their mean, divide by their standard deviation) for both networks before the temperature "
    "softmax, so the student matches the teacher's logit *relations* instead: "
    "loss = ce·CE + kd·T²·KL(σ(ẑ_t/T) ‖ σ(ẑ_s/T)). The same option (method.standardize=1) exists for kd, dkd "
    "and ctkd, where the paper applies it too.",
    {"standardize": switch("1: z-score the logits (this method's point); 0 gives plain KD", default=1)},
    stackable=True,
)


class KDLS(KD):
    spec = SPEC


METHOD = KDLS()
