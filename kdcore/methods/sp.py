"""Similarity-preserving KD (Tung & Mori 2019): the student keeps the teacher's batch similarity matrix."""

from __future__ import annotations

from kdcore.methods.at import STAGES_HELP, matched
from kdcore.methods.base import Method, MethodSpec, Term, num, param, stages_sum

SPEC = MethodSpec(
    "sp", "Similarity-preserving KD",
    "Tung & Mori 2019, \"Similarity-Preserving Knowledge Distillation\"",
    "Inputs that the teacher finds similar should look similar to the student too. For a batch, each network's "
    "activations give a batch-by-batch similarity matrix (dot products, each row normalised); the student "
    "matches the teacher's matrix. Only relations between samples are compared, so layer widths may differ "
    "and MLPs work too. Replaces the KD term: loss = ce·CE + weight·SP.",
    {"weight": param(3000.0, 0.0, 1e5, "γ, the weight of the similarity term (3000 in the paper's CIFAR runs)"),
     "stages": param(1, 1, 4, STAGES_HELP, integer=True)},
    terms=(Term("sp", "SP (unweighted)"),),
    uses_logit_kd=False, needs_teacher_forward=True,
    not_for_text="it matches stage outputs of both networks, which text models do not expose; for text try rkd "
                 "or pkt",
)


class SimilarityPreserving(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective, last_stages

        params = build.params

        def terms(ctx):
            s, t = last_stages(ctx, params["stages"], "sp")
            sp = losses.similarity_preserving_loss(s, t)
            return {"method": params["weight"] * sp, "sp": sp}
        return Objective(build, terms=terms)

    def formula(self, weights, temperature, params):
        j = "" if int(params["stages"]) == 1 else "^j"
        body = rf"\tfrac{{1}}{{B^2}}\big\|\tilde G{j}_s - \tilde G{j}_t\big\|_F^2"
        weighted = rf"{num(params['weight'])}\," + stages_sum(params["stages"], body)
        return super().formula(weights, temperature, params) + [weighted]

    def legend(self, params):
        return [rf"$\tilde G$ is the row-normalised $B\times B$ similarity matrix of {matched(params)} activations "
                "over the batch"]


METHOD = SimilarityPreserving()
