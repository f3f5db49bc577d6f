"""Relational KD (Park et al. 2019): match the geometry (distances, angles) of the teacher's features."""

from __future__ import annotations

from kdcore.methods.base import Method, MethodSpec, Term, num, param

SPEC = MethodSpec(
    "rkd", "Relational KD",
    "Park, Kim, Lu & Cho 2019, \"Relational Knowledge Distillation\"",
    "Instead of matching outputs one sample at a time, the student matches the geometry of the teacher's "
    "penultimate features across the batch: distances between pairs of samples (normalised by their mean) "
    "and angles formed by triplets, each with a Huber loss. Widths may differ. Replaces the KD term: "
    "loss = ce·CE + distance_weight·L_distance + angle_weight·L_angle. Needs batches of at least 3.",
    {"distance_weight": param(25.0, 0.0, 1000.0, "weight of the pairwise-distance term (25 in the paper)"),
     "angle_weight": param(50.0, 0.0, 1000.0, "weight of the triplet-angle term (50 in the paper)")},
    terms=(Term("rkd_distance", "RKD distance (unweighted)"), Term("rkd_angle", "RKD angle (unweighted)")),
    uses_logit_kd=False, needs_teacher_features=True,
)


class RelationalKD(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective, features

        params = build.params

        def terms(ctx):
            parts = losses.rkd_loss_parts(features(ctx.student, "student", "rkd"), features(ctx.teacher, "teacher", "rkd"))
            total = params["distance_weight"] * parts["distance"] + params["angle_weight"] * parts["angle"]
            return {"method": total, "rkd_distance": parts["distance"], "rkd_angle": parts["angle"]}
        return Objective(build, terms=terms)

    def formula(self, weights, temperature, params):
        return super().formula(weights, temperature, params) + [
            rf"{num(params['distance_weight'])}\,\mathcal{{L}}_{{\mathrm{{distance}}}}\big(f_s,\ f_t\big)",
            rf"{num(params['angle_weight'])}\,\mathcal{{L}}_{{\mathrm{{angle}}}}\big(f_s,\ f_t\big)"]

    def legend(self, params):
        return [r"$f$ are penultimate features; the terms compare pairwise distances and triplet angles across the batch"]


METHOD = RelationalKD()
