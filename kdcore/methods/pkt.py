"""Probabilistic knowledge transfer (Passalis & Tefas 2018): match the teacher's feature neighbourhoods."""

from __future__ import annotations

from kdcore.methods.base import Method, MethodSpec, Term, kl, num, param

SPEC = MethodSpec(
    "pkt", "Probabilistic knowledge transfer",
    "Passalis & Tefas 2018, \"Learning Deep Representations with Probabilistic Knowledge Transfer\"",
    "Each network's penultimate features define, for every sample, a probability distribution over the other "
    "samples of the batch (a cosine-similarity kernel, normalised per row). The student minimises the KL "
    "divergence from the teacher's distributions to its own, so it learns the teacher's neighbourhoods. "
    "Widths may differ. Replaces the KD term: loss = ce·CE + weight·PKT.",
    {"weight": param(30000.0, 0.0, 1e6, "weight of the PKT term (30000 in the CRD benchmark of PKT on CIFAR-100)")},
    terms=(Term("pkt", "PKT (unweighted)"),),
    uses_logit_kd=False, needs_teacher_features=True,
)


class ProbabilisticTransfer(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective, features

        params = build.params

        def terms(ctx):
            pkt = losses.pkt_loss(features(ctx.student, "student", "pkt"), features(ctx.teacher, "teacher", "pkt"))
            return {"method": params["weight"] * pkt, "pkt": pkt}
        return Objective(build, terms=terms)

    def formula(self, weights, temperature, params):
        return super().formula(weights, temperature, params) + [rf"{num(params['weight'])}\,{kl('P_t', 'P_s')}"]

    def legend(self, params):
        return [r"$P$ holds, per sample, cosine-kernel probabilities over the batch's other samples"]


METHOD = ProbabilisticTransfer()
