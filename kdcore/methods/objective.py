"""The torch side of a method: what it is built from, what a step gives it, what it returns.

    build = BuildContext(config, student, teacher, data_info, train_size, device)
    objective = METHODS[config.method].objective(build)
    x = objective.prepare_batch(x)                         # mixup for function_matching, else x itself
    parts = objective.step(StepContext(x, y, indices, epoch, step, student_out, teacher_out, hyper, labeled=mask))
    parts["loss"].backward()                               # every other entry is recorded as train_<name>

A step's `parts` hold "loss" (the whole objective, with its graph) and the detached scalars the
method records (ce, kd, feature, and its own terms, e.g. DKD's tckd and nckd). `hyper` carries the
numbers that may differ between the students of one stacked group (temperature, weights.ce,
weights.kd) as floats, or as 0-d tensors inside `torch.vmap`; a stackable method reads them from
there and avoids Python branches on them.

Labels the student may not use (`labeled_fraction`, a `transfer` set): `labeled` masks the batch's
samples that carry their own label. The CE term is taken over those only (0 for a batch without
any); for the others `y` carries the teacher's prediction (its argmax on the unaugmented input), so
a method that needs a target per sample (DKD's target class, CRD's class masking) still has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor, nn

from kdcore import losses
from kdcore.methods.base import MethodSpec

Outputs = tuple[Tensor, Tensor | None, list[Tensor] | None]  # (logits, penultimate features, stage outputs)
Terms = Callable[["StepContext"], dict[str, Tensor]]


@dataclass
class BuildContext:
    """Everything a method may need to build its objective, once per stage."""

    config: Any  # the RunConfig
    student: nn.Module
    teacher: nn.Module  # frozen
    data_info: Any  # the dataset's DatasetInfo (input_shape, num_classes, kind)
    train_size: int  # examples in the training split (memory banks are this long)
    device: torch.device
    params: dict[str, float] = field(default_factory=dict)  # the method's parameters, defaults filled in

    @property
    def feature_dims(self) -> tuple[int, int]:
        """(student, teacher) penultimate feature sizes."""
        return self.student.feature_dim, self.teacher.feature_dim


@dataclass
class StepContext:
    """What one training step gives the objective."""

    x: Tensor | None  # the batch as both networks saw it (after prepare_batch); None inside a stacked vmap
    y: Tensor  # hard labels [B]
    indices: Tensor  # dataset indices of the batch [B] (into the training split)
    epoch: int  # 1-based
    step: int  # 1-based, global within the stage
    student: Outputs
    teacher: Outputs  # logits and features: precomputed, or a forward on x when the method needs it
    hyper: dict[str, Any]  # temperature, ce, kd: floats, or 0-d tensors in a stacked group
    steps_per_epoch: int = 1
    labeled: Tensor | None = None  # bool [B]: samples with their own label (None: all); y is the teacher's elsewhere


def hyper_of(config: Any) -> dict[str, float]:
    """The per-run numbers a stacked group may vary: temperature and the CE/KD weights."""
    return {"temperature": config.temperature, "ce": config.weights.ce, "kd": config.weights.kd}


class Objective:
    """ce·CE + kd·KD (+ feature·hint) + the method's own terms.

    A method changes it through arguments rather than subclasses:
      terms(ctx) → {"method": weighted extra loss, <name>: detached scalar, ...}
      kd(ctx) → the KD term (T²·KL) when the method computes it differently (standardised logits,
                a learned temperature)
      modules: extra trainable modules (heads, a peer network, a temperature), optimised with the student
      prepare_batch: applied to x before both networks see it
    """

    def __init__(self, build: BuildContext, *, terms: Terms | None = None, kd: Callable[[StepContext], Tensor] | None = None,
                 modules: nn.Module | None = None, prepare_batch: Callable[[Tensor], Tensor] | None = None,
                 spec: MethodSpec | None = None) -> None:
        from kdcore.methods import method_spec

        self.spec = spec or method_spec(build.config.method)
        self.teacher = build.teacher
        self._terms = terms
        self._kd = kd or default_kd
        feature_weight = build.config.weights.feature if self.spec is not HARD_LABELS else 0.0
        self.projector = (nn.Linear(build.student.feature_dim, build.teacher.feature_dim).to(build.device)
                          if feature_weight > 0 else None)
        self.feature_weight = feature_weight
        owned = [m for m in (modules, self.projector) if m is not None]
        self.modules: nn.Module | None = owned[0] if len(owned) == 1 else (nn.ModuleList(owned) if owned else None)
        self.prepare_batch = prepare_batch or (lambda x: x)

    @property
    def needs_teacher_forward(self) -> bool:
        return self.spec.needs_teacher_forward

    @torch.no_grad()
    def teacher_outputs(self, x: Tensor) -> Outputs:
        """The frozen teacher on this batch: (logits float32, features, stages), without a graph."""
        logits, features, stages = self.teacher.forward_features(x)
        return logits.float(), features, stages

    def step(self, ctx: StepContext) -> dict[str, Tensor]:
        """The loss (with its graph) and every recorded term (detached)."""
        logits = ctx.student[0]
        w_ce, w_kd = ctx.hyper["ce"], ctx.hyper["kd"]
        zero = logits.new_zeros((), dtype=torch.float32)
        loss, parts = zero, {}
        if self.spec.uses_labels:
            ce = losses.labeled_cross_entropy(logits, ctx.y, ctx.labeled)
            loss = loss + w_ce * ce
            parts["ce"] = (ce * _on(w_ce)).detach()
        if self.spec.uses_logit_kd:
            kd = self._kd(ctx)
            loss = loss + w_kd * kd
            parts["kd"] = (kd * _on(w_kd)).detach()
        if self.projector is not None:
            feature = losses.hint_loss(self.projector(_needs(ctx.student[1], "student features")),
                                       _needs(ctx.teacher[1], "teacher features"))
            loss = loss + self.feature_weight * feature
            parts["feature"] = feature.detach()
        if self._terms is not None:
            own = self._terms(ctx)
            loss = loss + own.pop("method")
            parts.update({name: value.detach() for name, value in own.items()})
        return {"loss": loss, **parts}


def default_kd(ctx: StepContext) -> Tensor:
    """Hinton's T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), batch mean."""
    return losses.kd_loss(ctx.student[0], ctx.teacher[0], ctx.hyper["temperature"])


HARD_LABELS = MethodSpec("hard_labels", "Cross-entropy on the labels", "", "", uses_logit_kd=False)


def hard_label_objective(build: BuildContext) -> Objective:
    """Cross-entropy alone (weight 1): the teacher, the fine-tuning and the baseline stages."""
    return Objective(build, spec=HARD_LABELS)


def _on(weight: Any) -> Any:
    """1 where a weight is on, 0 where it is off (a term with weight 0 is reported as 0); vmap-safe."""
    return (weight > 0) if torch.is_tensor(weight) else float(weight > 0)


def _needs(value: Tensor | None, what: str) -> Tensor:
    if value is None:
        raise RuntimeError(f"this objective needs the {what} (forward_features()[1])")
    return value


def last_stages(ctx: StepContext, count: int, method: str) -> tuple[list[Tensor], list[Tensor]]:
    """The last `count` stage outputs of both networks, paired from the end."""
    student_stages, teacher_stages = ctx.student[2], ctx.teacher[2]
    if student_stages is None or teacher_stages is None:
        raise RuntimeError(f"{method} needs the stage outputs of both networks: run the teacher on every batch "
                           "(spec.needs_teacher_forward)")
    count = min(count, len(student_stages), len(teacher_stages))
    return list(student_stages[-count:]), list(teacher_stages[-count:])


def features(out: Outputs, role: str, method: str) -> Tensor:
    if out[1] is None:
        raise RuntimeError(f"{method} needs the {role}'s penultimate features (forward_features()[1])")
    return out[1]


def standardize(logits: Tensor) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): (z − mean(z)) / std(z) per sample. See `losses`."""
    return losses.standardize_logits(logits)


def check_feature_maps(model: nn.Module, input_shape: tuple[int, ...], role: str, arch: str, method: str) -> None:
    """ConfigError unless `model` gives 4-D stage maps (a cheap forward on two zero inputs)."""
    from kdcore.errors import ConfigError

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _, _, stages = model.forward_features(torch.zeros((2, *input_shape), device=device))
    model.train(was_training)
    if not stages or any(stage.dim() != 4 for stage in stages):
        raise ConfigError(f"{method} needs convolutional feature maps; {role} {arch} has none — pick cnn/resnet*")
