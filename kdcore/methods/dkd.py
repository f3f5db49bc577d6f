"""Decoupled KD (Zhao et al. 2022): target-class and non-target-class KD weighted separately."""

from __future__ import annotations

from kdcore.methods.base import STANDARDIZE, Method, MethodSpec, Term, num, param

SPEC = MethodSpec(
    "dkd", "Decoupled KD",
    "Zhao, Cui, Song, Qiu & Liang 2022, \"Decoupled Knowledge Distillation\"",
    "The KD term splits into two parts: how confident the teacher is in the true class (target-class KD, TCKD) "
    "and how it spreads the rest over the other classes (non-target KD, NCKD). In plain KD the second part is "
    "damped by the teacher's confidence; DKD weights them separately, α·TCKD + β·NCKD (both at the run's "
    "temperature, ×T²), ramped up linearly over the first warmup_epochs. Replaces the KD term.",
    {"alpha": param(1.0, 0.0, 10.0, "α, weight of the target-class term (1 in the paper)"),
     "beta": param(8.0, 0.0, 20.0, "β, weight of the non-target term (8 in the paper's CIFAR-100 runs)"),
     "warmup_epochs": param(20, 0, 1000, "epochs over which the DKD term ramps up linearly from 0 (20 in the paper; "
                            "0: none)", integer=True),
     "standardize": STANDARDIZE},
    terms=(Term("tckd", "TCKD (T²·, unweighted)"), Term("nckd", "NCKD (T²·, unweighted)")),
    uses_logit_kd=False,
)


class DecoupledKD(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective, standardize

        params, warmup = build.params, build.params["warmup_epochs"]
        prepare = standardize if params["standardize"] else (lambda z: z)

        def terms(ctx):
            temperature = ctx.hyper["temperature"]
            tckd, nckd = losses.dkd_terms(prepare(ctx.student[0]), prepare(ctx.teacher[0]), ctx.y, temperature)
            tckd, nckd = tckd.mean() * temperature**2, nckd.mean() * temperature**2
            ramp = min(ctx.epoch / warmup, 1.0) if warmup > 0 else 1.0  # the paper's linear warm-up, epochs 1-based
            return {"method": ramp * (params["alpha"] * tckd + params["beta"] * nckd), "tckd": tckd, "nckd": nckd}
        return Objective(build, terms=terms)

    def formula(self, weights, temperature, params):
        warmup = int(params["warmup_epochs"])
        ramp = rf"\min\!\big(\tfrac{{e}}{{{warmup}}},\,1\big)\cdot " if warmup > 0 else ""
        t = num(temperature)
        return super().formula(weights, temperature, params) + [
            rf"{ramp}{t}^2\big({num(params['alpha'])}\,\mathrm{{TCKD}} + {num(params['beta'])}\,\mathrm{{NCKD}}\big)"]

    def legend(self, params):
        lines = [r"TCKD and NCKD are the target-class and non-target parts of the KD term at $T$; $e$ is the epoch"]
        if params.get("standardize"):
            lines.append("both are computed on z-scored logits (logit standardisation)")
        return lines


METHOD = DecoupledKD()
