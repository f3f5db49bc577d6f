"""The distillation methods KD Lab offers, as plain metadata: names, papers, parameters, checks.

`METHODS` maps a name to its `MethodSpec`; `RunConfig.method` picks one and `RunConfig.method_params`
overrides its parameters (`--set method=at --set method.weight=500`). This module imports no torch,
so the app and config validation can list and check methods cheaply. The losses themselves are pure
functions in `kdcore.losses`; `kdcore.method_losses` turns a config into the per-step objective.

Every run's loss is  ce·CE + kd·KD (if the method uses the logit KD term) + the method's own term,
where ce, kd are `weights.ce`, `weights.kd` and the method term carries its own weight parameter(s).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Any

from kdcore.errors import ConfigError
from kdcore.model_names import mlp_widths


@dataclass(frozen=True)
class ParamSpec:
    """One numeric method parameter: its default, allowed range [low, high] and a one-line help."""

    default: float
    low: float
    high: float
    help: str
    integer: bool = False  # a count (e.g. how many stages); stored as an int


@dataclass(frozen=True)
class MethodSpec:
    """What a method is and what it needs from the trainer."""

    name: str
    title: str
    paper: str
    explanation: str  # one paragraph for the app
    params: dict[str, ParamSpec] = field(default_factory=dict)
    needs_feature_maps: bool = False  # needs 4-D [B, C, H, W] stage maps: conv student and teacher
    uses_logit_kd: bool = True  # the Hinton KD term (weights.kd) is part of the loss
    uses_labels: bool = True  # the hard-label CE term (weights.ce) is part of the loss
    needs_teacher_forward: bool = False  # the teacher runs on every batch (stage maps, mixed inputs)
    needs_teacher_features: bool = False  # uses the teacher's penultimate features (precomputable)


def _p(default: float, low: float, high: float, help: str, integer: bool = False) -> ParamSpec:
    return ParamSpec(default, low, high, help, integer)


_STAGES_HELP = "how many of the last stages to match (stage outputs paired from the end; capped at the fewer stages)"

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec(
        "kd", "Knowledge distillation (Hinton)",
        "Hinton, Vinyals & Dean 2015, \"Distilling the Knowledge in a Neural Network\"",
        "The student learns from the teacher's softened class probabilities: both networks' logits are "
        "divided by the temperature T before the softmax, and the student minimises T²·KL(teacher ‖ student) "
        "alongside the usual cross-entropy on the true labels. The small probabilities the teacher gives to "
        "wrong classes ('dark knowledge') tell the student which classes look alike.",
    ),
    MethodSpec(
        "fitnets", "FitNets (hints)",
        "Romero et al. 2015, \"FitNets: Hints for Thin Deep Nets\"",
        "On top of KD, the student's penultimate features are mapped by a small learned linear projector and "
        "pulled towards the teacher's features with a mean squared error (the 'hint'). Its weight is "
        "weights.feature, which must be above 0.",
    ),
    MethodSpec(
        "at", "Attention transfer",
        "Zagoruyko & Komodakis 2017, \"Paying More Attention to Attention\"",
        "The student matches where the teacher 'looks': for each matched stage, an attention map is the sum over "
        "channels of the activations' p-th power, flattened and normalised to unit length, and the student "
        "minimises the squared difference between its maps and the teacher's (averaged per position, as the "
        "authors' code). Channel counts may differ; spatial sizes are pooled to the smaller one. Needs "
        "convolutional student and teacher. Replaces the KD term: loss = ce·CE + weight·AT.",
        {"weight": _p(1000.0, 0.0, 1e5, "β, the weight of the attention term (1000 in the paper)"),
         "p": _p(2.0, 1.0, 4.0, "exponent of the attention map Σ_c |A_c|^p (2 in the paper)"),
         "stages": _p(3, 1, 4, _STAGES_HELP, integer=True)},
        needs_feature_maps=True, uses_logit_kd=False, needs_teacher_forward=True,
    ),
    MethodSpec(
        "sp", "Similarity-preserving KD",
        "Tung & Mori 2019, \"Similarity-Preserving Knowledge Distillation\"",
        "Inputs that the teacher finds similar should look similar to the student too. For a batch, each network's "
        "activations give a batch-by-batch similarity matrix (dot products, each row normalised); the student "
        "matches the teacher's matrix. Only relations between samples are compared, so layer widths may differ "
        "and MLPs work too. Replaces the KD term: loss = ce·CE + weight·SP.",
        {"weight": _p(3000.0, 0.0, 1e5, "γ, the weight of the similarity term (3000 in the paper's CIFAR runs)"),
         "stages": _p(1, 1, 4, _STAGES_HELP, integer=True)},
        uses_logit_kd=False, needs_teacher_forward=True,
    ),
    MethodSpec(
        "rkd", "Relational KD",
        "Park, Kim, Lu & Cho 2019, \"Relational Knowledge Distillation\"",
        "Instead of matching outputs one sample at a time, the student matches the geometry of the teacher's "
        "penultimate features across the batch: distances between pairs of samples (normalised by their mean) "
        "and angles formed by triplets, each with a Huber loss. Widths may differ. Replaces the KD term: "
        "loss = ce·CE + distance_weight·L_distance + angle_weight·L_angle. Needs batches of at least 3.",
        {"distance_weight": _p(25.0, 0.0, 1000.0, "weight of the pairwise-distance term (25 in the paper)"),
         "angle_weight": _p(50.0, 0.0, 1000.0, "weight of the triplet-angle term (50 in the paper)")},
        uses_logit_kd=False, needs_teacher_features=True,
    ),
    MethodSpec(
        "pkt", "Probabilistic knowledge transfer",
        "Passalis & Tefas 2018, \"Learning Deep Representations with Probabilistic Knowledge Transfer\"",
        "Each network's penultimate features define, for every sample, a probability distribution over the other "
        "samples of the batch (a cosine-similarity kernel, normalised per row). The student minimises the KL "
        "divergence from the teacher's distributions to its own, so it learns the teacher's neighbourhoods. "
        "Widths may differ. Replaces the KD term: loss = ce·CE + weight·PKT.",
        {"weight": _p(30000.0, 0.0, 1e6, "weight of the PKT term (30000 in the CRD benchmark of PKT on CIFAR-100)")},
        uses_logit_kd=False, needs_teacher_features=True,
    ),
    MethodSpec(
        "dkd", "Decoupled KD",
        "Zhao, Cui, Song, Qiu & Liang 2022, \"Decoupled Knowledge Distillation\"",
        "The KD term splits into two parts: how confident the teacher is in the true class (target-class KD, TCKD) "
        "and how it spreads the rest over the other classes (non-target KD, NCKD). In plain KD the second part is "
        "damped by the teacher's confidence; DKD weights them separately, α·TCKD + β·NCKD (both at the run's "
        "temperature, ×T²), ramped up linearly over the first warmup_epochs. Replaces the KD term.",
        {"alpha": _p(1.0, 0.0, 10.0, "α, weight of the target-class term (1 in the paper)"),
         "beta": _p(8.0, 0.0, 20.0, "β, weight of the non-target term (8 in the paper's CIFAR-100 runs)"),
         "warmup_epochs": _p(20, 0, 1000, "epochs over which the DKD term ramps up linearly from 0 (20 in the paper; "
                             "0: none)", integer=True)},
        uses_logit_kd=False,
    ),
    MethodSpec(
        "dist", "DIST",
        "Huang, You, Wang, Qian & Xu 2022, \"Knowledge Distillation from A Stronger Teacher\"",
        "Matching probabilities exactly is hard when the teacher is much stronger, so DIST asks only for the same "
        "relations: each sample's class probabilities should be correlated with the teacher's (inter-class, "
        "Pearson correlation across classes), and each class's probabilities across the batch likewise "
        "(intra-class). Uses the run's temperature. Replaces the KD term: loss = ce·CE + β·inter + γ·intra.",
        {"beta": _p(1.0, 0.0, 10.0, "β, weight of the inter-class relation (1 in the paper)"),
         "gamma": _p(1.0, 0.0, 10.0, "γ, weight of the intra-class relation (1 in the paper)")},
        uses_logit_kd=False,
    ),
    MethodSpec(
        "multi_teacher", "Multiple teachers",
        "Hinton et al. 2015 (ensembles); You, Xu, Xu & Tao 2017, \"Learning from Multiple Teacher Networks\"",
        "Several teachers of the configured architecture are trained from different seeds (teacher.seed, "
        "teacher.seed+1, ...), and the student distils from the average of their softened distributions, which "
        "is usually better calibrated than any single teacher. The KD term uses that average; everything else "
        "is as in KD.",
        {"teachers": _p(3, 2, 8, "how many teachers (each trained, or reused from the cache, with its own seed)",
                        integer=True)},
    ),
    MethodSpec(
        "dml", "Deep mutual learning",
        "Zhang, Xiang, Hospedales & Lu 2018, \"Deep Mutual Learning\"",
        "No pre-trained teacher is needed: the student and a peer network (the teacher's architecture, trained "
        "from scratch alongside) learn together, each minimising cross-entropy plus the KL divergence towards "
        "the other's predictions. The trained teacher is still reported for comparison but not learned from. "
        "Replaces the CE and KD terms (weights.ce and weights.kd are not used).",
        {"temperature": _p(1.0, 0.1, 20.0, "softmax temperature of the mutual KL terms (1 in the paper)")},
        uses_logit_kd=False, uses_labels=False,
    ),
    MethodSpec(
        "function_matching", "Function matching",
        "Beyer, Zhai, Royer, Markeeva, Anil & Kolesnikov 2022, \"Knowledge distillation: A good teacher is "
        "patient and consistent\"",
        "The student should match the teacher's function everywhere inputs may lie, not just on the training "
        "images: teacher and student see exactly the same view of every batch (the teacher runs on each batch, "
        "never from precomputed labels), and pairs of images are blended with mixup to widen the inputs seen. "
        "Only the KD term is used (mixed images have no single label). Benefits from long training.",
        {"mixup_alpha": _p(1.0, 0.0, 10.0, "mixup strength: the blend weight λ ~ Beta(α, α); 0 turns mixup off")},
        uses_labels=False, needs_teacher_forward=True,
    ),
)}


def method_spec(name: str) -> MethodSpec:
    """The spec of method `name`; ConfigError naming the valid methods otherwise."""
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return spec


def validate_params(method: str, params: Any) -> dict[str, float]:
    """Check `params` against the method's ParamSpecs; returns them normalised (floats, ints for counts)."""
    spec = method_spec(method)
    if not isinstance(params, dict):
        raise ConfigError(f"method_params must be a mapping of parameter names to numbers, got {params!r}")
    clean: dict[str, float] = {}
    for key, value in params.items():
        if key not in spec.params:
            valid = f"valid: {', '.join(spec.params)}" if spec.params else "it has no parameters"
            raise ConfigError(f"unknown parameter {key!r} for method {method}; {valid}")
        param, name = spec.params[key], f"method.{key}"
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if param.integer and float(value) != int(value):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if not param.low <= value <= param.high:
            raise ConfigError(f"{name} must be between {param.low:g} and {param.high:g}, got {value!r}")
        clean[key] = int(value) if param.integer else float(value)
    return clean


def resolve_params(method: str, params: dict[str, float] | None = None) -> dict[str, float]:
    """The method's parameters with defaults filled in for those not given."""
    spec = method_spec(method)
    given = validate_params(method, params or {})
    return {key: given.get(key, int(p.default) if p.integer else p.default) for key, p in spec.params.items()}


def _is_mlp(arch: str) -> bool:
    return mlp_widths(arch) is not None


def validate_method(config: Any) -> dict[str, float]:
    """Validate `config.method` and `config.method_params` against the rest of a RunConfig.

    Returns the normalised method_params (only those given; defaults are not filled in, so a stored
    config says what the user chose). Raises ConfigError with a one-line message.
    """
    method = config.method
    spec = method_spec(method)
    params = validate_params(method, config.method_params)
    if spec.needs_feature_maps:
        for role, arch in (("student", config.student.arch), ("teacher", config.teacher.arch)):
            if _is_mlp(arch):
                raise ConfigError(f"{method} needs convolutional feature maps; {role} {arch} has none "
                                  f"— pick cnn/resnet*")
    if method == "fitnets" and config.weights.feature <= 0:
        raise ConfigError("method fitnets needs weights.feature > 0 (the weight of the hint loss), e.g. "
                          "--set weights.feature=1")
    if method == "multi_teacher" and config.teacher.checkpoint:
        raise ConfigError("method multi_teacher trains its teachers from different seeds; "
                          "teacher.checkpoint would give one teacher only (unset it)")
    if method == "function_matching" and config.weights.kd <= 0:
        raise ConfigError("method function_matching learns from the KD term only; weights.kd must be > 0")
    return params


def multi_teacher_seeds(config: Any) -> list[int]:
    """Seeds of the teachers of a multi_teacher run: teacher.seed, teacher.seed + 1, ..."""
    count = resolve_params(config.method, config.method_params).get("teachers", 1)
    return [config.teacher.seed + k for k in range(int(count))]


def list_methods() -> list[dict[str, Any]]:
    """One JSON-able row per method: name, title, paper, explanation, flags and params (default, range, help)."""
    rows = []
    for spec in METHODS.values():
        row = asdict(spec)
        row["params"] = {key: asdict(param) for key, param in spec.params.items()}
        rows.append(row)
    return rows
