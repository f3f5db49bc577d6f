"""Attention transfer (Zagoruyko & Komodakis 2017): match where the teacher's feature maps are active."""

from __future__ import annotations

from kdcore.methods.base import Method, MethodSpec, Term, num, param, stages_sum

STAGES_HELP = "how many of the last stages to match (stage outputs paired from the end; capped at the fewer stages)"

SPEC = MethodSpec(
    "at", "Attention transfer",
    "Zagoruyko & Komodakis 2017, \"Paying More Attention to Attention\"",
    "The student matches where the teacher 'looks': for each matched stage, an attention map is the sum over "
    "channels of the activations' p-th power, flattened and normalised to unit length, and the student "
    "minimises the squared difference between its maps and the teacher's (averaged per position, as the "
    "authors' code). Channel counts may differ; spatial sizes are pooled to the smaller one. Needs "
    "convolutional student and teacher. Replaces the KD term: loss = ce·CE + weight·AT.",
    {"weight": param(1000.0, 0.0, 1e5, "β, the weight of the attention term (1000 in the paper)"),
     "p": param(2.0, 1.0, 4.0, "exponent of the attention map Σ_c |A_c|^p (2 in the paper)"),
     "stages": param(3, 1, 4, STAGES_HELP, integer=True)},
    terms=(Term("at", "AT (unweighted)"),),
    needs_feature_maps=True, uses_logit_kd=False, needs_teacher_forward=True,
    not_for_text="it matches convolutional feature maps, which text models do not have",
)


class AttentionTransfer(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective, check_feature_maps, last_stages

        config, params = build.config, build.params
        check_feature_maps(build.student, build.data_info.input_shape, "student", config.student.arch, "at")
        check_feature_maps(build.teacher, build.data_info.input_shape, "teacher", config.teacher.arch, "at")

        def terms(ctx):
            s, t = last_stages(ctx, params["stages"], "at")
            at = losses.attention_transfer_loss(s, t, p=params["p"])
            return {"method": params["weight"] * at, "at": at}
        return Objective(build, terms=terms)

    def formula(self, weights, temperature, params):
        j = "" if int(params["stages"]) == 1 else "^j"
        body = rf"\mathrm{{AT}}_{{p={num(params['p'])}}}\big(\hat Q{j}_s,\ \hat Q{j}_t\big)"
        weighted = rf"{num(params['weight'])}\," + stages_sum(params["stages"], body)
        return super().formula(weights, temperature, params) + [weighted]

    def legend(self, params):
        return [rf"$\hat Q$ is {matched(params)} attention map $\sum_c |A_c|^p$, normalised to unit length"]


def matched(params) -> str:
    stages = params.get("stages", 1)
    stages = int(stages) if isinstance(stages, (int, float)) and stages == stages else 1
    return "the last stage's" if stages == 1 else f"each of the last {stages} stages'"


METHOD = AttentionTransfer()
