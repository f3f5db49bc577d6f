"""Knowledge distillation (Hinton, Vinyals & Dean 2015): the teaching preset, and the base of every logit method."""

from __future__ import annotations

from kdcore.methods.base import STANDARDIZE, Method, MethodSpec, common_formula, num

SPEC = MethodSpec(
    "kd", "Knowledge distillation (Hinton)",
    "Hinton, Vinyals & Dean 2015, \"Distilling the Knowledge in a Neural Network\"",
    "The student learns from the teacher's softened class probabilities: both networks' logits are "
    "divided by the temperature T before the softmax, and the student minimises T²·KL(teacher ‖ student) "
    "alongside the usual cross-entropy on the true labels. The small probabilities the teacher gives to "
    "wrong classes ('dark knowledge') tell the student which classes look alike. With standardize = 1 both "
    "logit vectors are z-scored first (logit standardisation, see kd_ls).",
    {"standardize": STANDARDIZE},
    stackable=True,
)


class KD(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective, standardize

        if not build.params.get("standardize"):
            return Objective(build)

        def kd(ctx):  # the paper's KD+LS: the same T²·KL, on z-scored logits
            return losses.kd_loss(standardize(ctx.student[0]), standardize(ctx.teacher[0]), ctx.hyper["temperature"])
        return Objective(build, kd=kd)

    def formula(self, weights, temperature, params):
        t = num(temperature)
        if params.get("standardize"):
            return common_formula(self.spec, weights, temperature, teacher=rf"\sigma(\hat z_t/{t})",
                                  student=rf"\sigma(\hat z_s/{t})")
        return common_formula(self.spec, weights, temperature)

    def legend(self, params):
        if params.get("standardize"):
            return [r"$\hat z = (z - \bar z)/\mathrm{std}(z)$ are the z-scored logits of each sample"]
        return []


METHOD = KD()
