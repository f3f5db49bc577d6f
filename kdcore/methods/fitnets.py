"""FitNets (Romero et al. 2015): KD plus a hint that pulls the student's features towards the teacher's."""

from __future__ import annotations

from kdcore.errors import ConfigError
from kdcore.methods.base import Method, MethodSpec

SPEC = MethodSpec(
    "fitnets", "FitNets (hints)",
    "Romero et al. 2015, \"FitNets: Hints for Thin Deep Nets\"",
    "On top of KD, the student's penultimate features are mapped by a small learned linear projector and "
    "pulled towards the teacher's features with a mean squared error (the 'hint'). Its weight is "
    "weights.feature, which must be above 0.",
    needs_teacher_features=True, trains_extra_modules=True, suggested={"weights.feature": 1.0},
)


class FitNets(Method):
    spec = SPEC

    def check(self, config):
        if config.weights.feature <= 0:
            raise ConfigError("method fitnets needs weights.feature > 0 (the weight of the hint loss), e.g. "
                              "--set weights.feature=1")

    def weights_note(self):
        return ("FitNets adds the hint term, weighted by the **Feature weight** (Loss weights → Advanced): "
                "set it above 0.")

    def form_hint(self, weights):
        if not weights.get("feature", 0) > 0:
            return " In this form: Loss weights → Advanced, then a Feature weight above 0."
        return ""

    # the objective is plain KD: Objective adds the hint (with its projector) whenever weights.feature > 0


METHOD = FitNets()
