"""What a distillation method is, as the rest of KD Lab sees it: a spec, checks, an objective, a formula.

A method module (one per method in this package) defines one `Method` subclass and an instance
`METHOD`. Everything that is particular to the method lives there:

    spec        name, title, paper, explanation, hyperparameters, what it needs, the terms it records
    check       refusals against a whole RunConfig beyond the parameter ranges (one-line ConfigError)
    objective   the per-step loss, built from a `BuildContext` (torch; imported only when training)
    formula     its loss as LaTeX with the chosen numbers, and a legend of the symbols (for the app)

This module imports no torch: the app, the CLI and config validation list and check methods
cheaply. The torch side (contexts, the objective object) is `kdcore.methods.objective`.

Every run's loss is  ce·CE + kd·KD (when the method keeps those terms) + feature·hint (when
weights.feature > 0) + the method's own terms, each weighted by the method's parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Any

from kdcore.errors import ConfigError
from kdcore.model_names import mlp_widths

if TYPE_CHECKING:  # torch-side types, for annotations only
    from kdcore.methods.objective import BuildContext, Objective


@dataclass(frozen=True)
class ParamSpec:
    """One numeric method parameter: its default, allowed range [low, high] and a one-line help."""

    default: float
    low: float
    high: float
    help: str
    integer: bool = False  # a count or a switch (0/1); stored as an int


@dataclass(frozen=True)
class Term:
    """A scalar an objective returns each step; recorded as the series `train_<name>`.

    kind "loss": a loss part, drawn on the loss chart; "value": another quantity (a learned
    temperature), drawn on its own axis.
    """

    name: str
    label: str
    kind: str = "loss"


# The terms every objective may return; a method lists only its own in `MethodSpec.terms`.
COMMON_TERMS = (Term("loss", "total"), Term("ce", "CE"), Term("kd", "KD (T²·KL)"), Term("feature", "feature (MSE)"))


@dataclass(frozen=True)
class MethodSpec:
    """What a method is and what it needs from the trainer."""

    name: str
    title: str
    paper: str
    explanation: str  # one paragraph for the app
    params: dict[str, ParamSpec] = field(default_factory=dict)
    terms: tuple[Term, ...] = ()  # its own recorded terms, beyond COMMON_TERMS
    uses_logit_kd: bool = True  # the Hinton KD term (weights.kd) is part of the loss
    uses_labels: bool = True  # the hard-label CE term (weights.ce) is part of the loss
    needs_feature_maps: bool = False  # 4-D [B, C, H, W] stage maps on both sides: conv student and teacher
    needs_teacher_forward: bool = False  # the teacher runs on every batch (stage maps, mixed inputs)
    needs_teacher_features: bool = False  # the teacher's penultimate features (precomputable per example)
    needs_indices: bool = False  # the dataset indices of each batch (a memory bank over the training set)
    trains_extra_modules: bool = False  # learns modules of its own with the student (heads, a peer, a temperature)
    ensemble_teacher: bool = False  # the teacher it learns from (and reports) is an ensemble of teachers
    stackable: bool = False  # runs differing only in temperature, weights and seed can train as one stacked model
    suggested: dict[str, float] = field(default_factory=dict)  # settings it needs to mean anything (dotted keys)
    not_for_text: str = ""  # why it cannot run on text (token ids); empty: it can
    text_only: bool = False  # it matches what only text Transformers have (hidden states per token, attention)
    teacher_token_states: tuple[int, ...] = ()  # text: the teacher's hidden states per token it matches (stage indices)


class Method:
    """A distillation method. Subclasses set `spec` and override what differs from plain KD."""

    spec: MethodSpec

    # --- validation (torch-free) -----------------------------------------------------------------------

    def check(self, config: Any) -> None:
        """Refuse a config this method cannot run, with a one-line ConfigError (parameters are checked already)."""
        if self.spec.needs_feature_maps:
            for role, arch in (("student", config.student.arch), ("teacher", config.teacher.arch)):
                if mlp_widths(arch) is not None:
                    raise ConfigError(f"{self.spec.name} needs convolutional feature maps; {role}.arch {arch} has "
                                      "none — pick cnn/resnet*")

    def teacher_seeds(self, config: Any) -> list[int]:
        """Seeds of the teachers it learns from (one teacher: the configured one)."""
        return [config.teacher.seed]

    # --- training (torch) ------------------------------------------------------------------------------

    def objective(self, build: BuildContext) -> Objective:
        """The per-step objective; the default is plain KD: ce·CE + kd·T²·KL (+ feature·hint)."""
        from kdcore.methods.objective import Objective

        return Objective(build)

    def combine_teachers(self, teachers: list[Any], config: Any) -> Any:
        """The one teacher the student learns from, given those of `teacher_seeds` (trained or cached)."""
        return teachers[0]

    # --- the app's formula -----------------------------------------------------------------------------

    def formula(self, weights: dict[str, float], temperature: float, params: dict[str, float]) -> list[str]:
        """The loss's weighted terms as LaTeX with the chosen numbers, one string per line."""
        return common_formula(self.spec, weights, temperature)

    def legend(self, params: dict[str, float]) -> list[str]:
        """What this method's symbols stand for (Markdown with inline LaTeX), beyond the common ones."""
        return []

    def weights_note(self) -> str | None:
        """How the method uses the form's loss weights, when not as plain KD does."""
        spec = self.spec
        if not spec.uses_labels and not spec.uses_logit_kd:
            return f"{spec.title} has its own objective: the CE and KD weights are not used."
        if not spec.uses_labels:
            return f"{spec.title} learns from the KD term only: the CE weight is not used."
        if not spec.uses_logit_kd:
            return (f"{spec.title} replaces the KD term with its own: of the loss weights only the CE weight "
                    "(1 − α with the slider) is used.")
        return None

    def form_hint(self, weights: dict[str, float]) -> str:
        """Where in the New run form to fix a refusal whose message speaks the CLI's language."""
        return ""


def param(default: float, low: float, high: float, help: str, integer: bool = False) -> ParamSpec:
    return ParamSpec(default, low, high, help, integer)


def switch(help: str, default: int = 0) -> ParamSpec:
    """An on/off parameter (0 or 1), e.g. `--set method.standardize=1`."""
    return ParamSpec(default, 0, 1, help, integer=True)


STANDARDIZE = switch("1: z-score both logit vectors before the temperature softmax (logit standardisation, "
                     "Sun et al. 2024)")


def check_params(spec: MethodSpec, params: Any) -> dict[str, float]:
    """Check `params` against the spec's ParamSpecs; returns them normalised (floats, ints for counts)."""
    if not isinstance(params, dict):
        raise ConfigError(f"method_params must be a mapping of parameter names to numbers, got {params!r}")
    clean: dict[str, float] = {}
    for key, value in params.items():
        if key not in spec.params:
            valid = f"valid: {', '.join(spec.params)}" if spec.params else "it has no parameters"
            raise ConfigError(f"unknown parameter {key!r} for method {spec.name}; {valid}")
        p, name = spec.params[key], f"method.{key}"
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if p.integer and float(value) != int(value):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if not p.low <= value <= p.high:
            raise ConfigError(f"{name} must be between {p.low:g} and {p.high:g}, got {value!r}")
        clean[key] = int(value) if p.integer else float(value)
    return clean


def with_defaults(spec: MethodSpec, params: dict[str, float] | None) -> dict[str, float]:
    """The parameters with the paper defaults filled in for those not given."""
    given = check_params(spec, params or {})
    return {key: given.get(key, default_value(p)) for key, p in spec.params.items()}


def default_value(p: ParamSpec) -> float:
    return int(p.default) if p.integer else p.default


# --- LaTeX pieces shared by the formulas ------------------------------------------------------------------


def num(value: float) -> str:
    return f"{value:g}"


def kl(teacher: str, student: str) -> str:
    return rf"\mathrm{{KL}}\big({teacher}\,\big\|\,{student}\big)"


def ce_latex(weight: float, logits: str = "z_s") -> str:
    return rf"{num(weight)}\,\mathrm{{CE}}\big(y,\ \sigma({logits})\big)"


def kd_latex(weight: float, temperature: str, teacher: str | None = None, student: str | None = None) -> str:
    teacher = teacher or rf"\sigma(z_t/{temperature})"
    student = student or rf"\sigma(z_s/{temperature})"
    return rf"{num(weight)}\cdot {temperature}^2\,{kl(teacher, student)}"


def common_formula(spec: MethodSpec, weights: dict[str, float], temperature: float, *,
                   teacher: str | None = None, student: str | None = None) -> list[str]:
    """CE, KD and feature terms as the method keeps them (`uses_labels`, `uses_logit_kd`)."""
    terms = []
    if weights.get("ce") and spec.uses_labels:
        terms.append(ce_latex(weights["ce"]))
    if weights.get("kd") and spec.uses_logit_kd:
        terms.append(kd_latex(weights["kd"], num(temperature), teacher, student))
    if weights.get("feature"):
        terms.append(rf"{num(weights['feature'])}\,\mathrm{{MSE}}\big(r(f_s),\ f_t\big)")
    return terms


def stages_sum(count: float, body: str) -> str:
    count = int(count)
    return body if count == 1 else rf"\textstyle\sum_{{j=1}}^{{{count}}} {body}"
