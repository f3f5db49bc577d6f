"""Curriculum temperature for KD (Li et al., AAAI 2023): a temperature learned adversarially.

The temperature is a learnable module trained by the student's own optimiser through a gradient
reversal layer: the student descends the KD loss while the temperature ascends it, i.e. it moves
towards the temperature that makes imitation hardest, and the reversal's strength λ follows the
paper's cosine curriculum from λ_min to λ_max over the first `curriculum_epochs`, so the task gets
harder as the student gets better. Global: one T for all; instance: a small MLP on both networks'
logits gives each example its own T. T = t_min + t_range · sigmoid(θ) stays in (t_min, t_min + t_range).
"""

from __future__ import annotations

import math

from kdcore.errors import ConfigError
from kdcore.methods.base import STANDARDIZE, Method, MethodSpec, Term, common_formula, num, param, switch

SPEC = MethodSpec(
    "ctkd", "Curriculum temperature KD",
    "Li, Li, Yang, Li, Wang, Hu & Yang 2023, \"Curriculum Temperature for Knowledge Distillation\" (AAAI)",
    "Instead of a fixed temperature, CTKD learns it: a temperature module is trained adversarially to the "
    "student through a gradient reversal layer, so it moves to where the KD term is hardest for the student, and "
    "a cosine curriculum raises the adversary's strength λ from 0 to 1 over the first epochs (easy to hard). "
    "The learned temperature is recorded every step and drawn live. The run's temperature setting is only used "
    "for the validation KL and the soft-label views; the KD term uses the learned T: "
    "loss = ce·CE + kd·T_learned²·KL(σ(z_t/T_learned) ‖ σ(z_s/T_learned)).",
    {"t_min": param(1.0, 0.1, 20.0, "lowest temperature the module can reach (1 in the paper)"),
     "t_range": param(20.0, 0.5, 100.0, "T = t_min + t_range·sigmoid(θ) (the paper's range: 1 to 21)"),
     "lambda_max": param(1.0, 0.0, 10.0, "λ_max, the gradient reversal's final strength (1 in the paper)"),
     "lambda_min": param(0.0, 0.0, 10.0, "λ_min, its starting strength (0 in the paper)"),
     "curriculum_epochs": param(10, 1, 1000, "epochs of the cosine curriculum from λ_min to λ_max (10 in the paper)",
                                integer=True),
     "instance": switch("1: a temperature per example from a small MLP on both logits; 0: one global T"),
     "standardize": STANDARDIZE},
    terms=(Term("temperature", "learned temperature T (mean over the batch)", kind="value"),),
    trains_extra_modules=True,
)


class CTKD(Method):
    spec = SPEC

    def check(self, config):
        if config.weights.kd <= 0:
            raise ConfigError("method ctkd learns its temperature through the KD term; weights.kd must be > 0")

    def objective(self, build):
        import torch
        from torch import nn

        from kdcore import losses
        from kdcore.methods.objective import Objective, standardize

        params = build.params
        prepare = standardize if params["standardize"] else (lambda z: z)
        classes = build.data_info.num_classes
        with torch.random.fork_rng(devices=[]):  # the module's init must not shift the caller's random stream
            torch.manual_seed(build.config.seed + 3)
            module = (nn.Sequential(nn.Linear(2 * classes, 256), nn.ReLU(), nn.Linear(256, 1)) if params["instance"]
                      else _GlobalTemperature()).to(build.device)
        latest = {}

        def temperature(ctx):
            lam = curriculum_lambda(ctx.epoch - 1 + (ctx.step - 1) % ctx.steps_per_epoch / ctx.steps_per_epoch, params)
            if params["instance"]:
                raw = module(torch.cat([ctx.teacher[0].float(), ctx.student[0].detach().float()], dim=1))  # [B, 1]
            else:
                raw = module()
            raw = losses.reverse_gradient(raw, lam)
            return params["t_min"] + params["t_range"] * torch.sigmoid(raw)

        def kd(ctx):
            t = temperature(ctx)
            latest["t"] = t.detach().mean()
            per_sample = losses.kd_loss_per_sample(prepare(ctx.student[0]), prepare(ctx.teacher[0]), t)
            return (per_sample * t.reshape(-1) ** 2).mean()

        def terms(ctx):  # runs after kd(): the temperature it used
            return {"method": latest["t"].new_zeros(()), "temperature": latest["t"]}
        return Objective(build, kd=kd, terms=terms, modules=module)

    def formula(self, weights, temperature, params):
        teacher, student = r"\sigma(z_t/T_\theta)", r"\sigma(z_s/T_\theta)"
        terms = common_formula(self.spec, weights, temperature, teacher=teacher, student=student)
        return [term.replace(rf"{num(temperature)}^2", r"T_\theta^2") for term in terms]

    def legend(self, params):
        which = "each example's" if params.get("instance") else "the"
        return [rf"$T_\theta$ is {which} learned temperature, in $({num(params['t_min'])},\ "
                rf"{num(params['t_min'] + params['t_range'])})$, trained to *increase* the KD term through a gradient "
                r"reversal of strength $\lambda$ (cosine curriculum)"]


def curriculum_lambda(epoch: float, params: dict[str, float]) -> float:
    """λ at a (fractional, 0-based) epoch: λ_min + ½(λ_max − λ_min)(1 + cos(π(1 + min(e, E)/E))), the paper's Eq. 8."""
    loops = params["curriculum_epochs"]
    progress = min(epoch, loops) / loops
    return params["lambda_min"] + 0.5 * (params["lambda_max"] - params["lambda_min"]) * (1 + math.cos(math.pi * (1 + progress)))


def _GlobalTemperature():
    import torch
    from torch import nn

    class GlobalTemperature(nn.Module):
        """θ of one global temperature, initialised at 1 as the authors' code (T starts at t_min + 0.73·t_range)."""

        def __init__(self) -> None:
            super().__init__()
            self.theta = nn.Parameter(torch.ones(1))

        def forward(self):
            return self.theta

    return GlobalTemperature()


METHOD = CTKD()
