"""DIST (Huang et al. 2022): match the teacher's class relations by correlation, not exact probabilities."""

from __future__ import annotations

from kdcore.methods.base import Method, MethodSpec, Term, num, param

SPEC = MethodSpec(
    "dist", "DIST",
    "Huang, You, Wang, Qian & Xu 2022, \"Knowledge Distillation from A Stronger Teacher\"",
    "Matching probabilities exactly is hard when the teacher is much stronger, so DIST asks only for the same "
    "relations: each sample's class probabilities should be correlated with the teacher's (inter-class, "
    "Pearson correlation across classes), and each class's probabilities across the batch likewise "
    "(intra-class). Uses the run's temperature. Replaces the KD term: loss = ce·CE + β·inter + γ·intra.",
    {"beta": param(1.0, 0.0, 10.0, "β, weight of the inter-class relation (1 in the paper)"),
     "gamma": param(1.0, 0.0, 10.0, "γ, weight of the intra-class relation (1 in the paper)")},
    terms=(Term("dist_inter", "DIST inter-class (T²·, unweighted)"), Term("dist_intra", "DIST intra-class (T²·, unweighted)")),
    uses_logit_kd=False,
)


class DIST(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective

        params = build.params

        def terms(ctx):
            temperature = ctx.hyper["temperature"]
            inter = losses.dist_loss(ctx.student[0], ctx.teacher[0], beta=1.0, gamma=0.0, temperature=temperature)
            intra = losses.dist_loss(ctx.student[0], ctx.teacher[0], beta=0.0, gamma=1.0, temperature=temperature)
            return {"method": params["beta"] * inter + params["gamma"] * intra, "dist_inter": inter, "dist_intra": intra}
        return Objective(build, terms=terms)

    def formula(self, weights, temperature, params):
        t = num(temperature)
        return super().formula(weights, temperature, params) + [
            rf"{num(params['beta'])}\cdot {t}^2\big(1 - \bar\rho_{{\mathrm{{inter}}}}\big)",
            rf"{num(params['gamma'])}\cdot {t}^2\big(1 - \bar\rho_{{\mathrm{{intra}}}}\big)"]

    def legend(self, params):
        return [r"$\bar\rho$ is the mean Pearson correlation of $\sigma(z/T)$, per sample (inter) and per class (intra)"]


METHOD = DIST()
