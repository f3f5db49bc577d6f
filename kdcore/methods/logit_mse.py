"""Logit matching (Ba & Caruana 2014; Tang et al. 2019's loss for BERT → BiLSTM): regress the teacher's logits."""

from __future__ import annotations

from kdcore.methods.base import Method, MethodSpec, Term, num, param

SPEC = MethodSpec(
    "logit_mse", "Logit matching (MSE)",
    "Ba & Caruana 2014, \"Do Deep Nets Really Need to be Deep?\"; Tang, Lu, Liu, Mou, Vechtomova & Lin 2019, "
    "\"Distilling Task-Specific Knowledge from BERT into Simple Neural Networks\"",
    "The student regresses the teacher's logits themselves: the mean squared difference between the two logit "
    "vectors replaces the KD term, so no softmax and no temperature come between them (Hinton et al. showed KD "
    "at a high temperature approaches this, for zero-mean logits). Tang et al. distil BERT into a BiLSTM this "
    "way, and found it better than KL on the softened probabilities there; it also keeps the teacher's margins, "
    "which a 2-class softmax squashes. The run's temperature is only used for the validation KL and the "
    "soft-label views. loss = ce·CE + weight·MSE(z_s, z_t).",
    {"weight": param(1.0, 0.0, 100.0, "weight of the logit MSE term (Tang et al.: 1 − α, with ce = α)")},
    terms=(Term("logit_mse", "logit MSE (unweighted)"),),
    uses_logit_kd=False,
)


class LogitMSE(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective

        weight = build.params["weight"]

        def terms(ctx):
            mse = losses.logit_mse(ctx.student[0], ctx.teacher[0])
            return {"method": weight * mse, "logit_mse": mse}
        return Objective(build, terms=terms)

    def formula(self, weights, temperature, params):
        return super().formula(weights, temperature, params) + [
            rf"{num(params['weight'])}\cdot\tfrac{{1}}{{C}}\,\lVert z_s - z_t\rVert^2"]

    def legend(self, params):
        return [r"$C$ is the number of classes; the squared difference is averaged over classes and the batch"]


METHOD = LogitMSE()
