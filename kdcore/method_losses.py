"""A run's distillation method as a per-step objective (the torch side of `kdcore.methods`).

    objective = method_objective(config, student, teacher, data.info)
    x = objective.prepare_batch(x)                      # mixup for function_matching, else x itself
    teacher_out = objective.teacher_outputs(x)          # only when objective.needs_teacher_forward
    terms = objective.step_terms(x, student.forward_features(x), teacher_out, y, epoch)
    loss = ce·CE (if uses_labels) + kd·KD (if uses_logit_kd) + terms["method"]

`terms["method"]` is the method's whole extra loss, already weighted by its own parameters; other
keys are its unweighted parts, for logging. The formulas live in `kdcore.losses`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore import losses
from kdcore.errors import ConfigError
from kdcore.methods import MethodSpec, method_spec, resolve_params, validate_method

Outputs = tuple[Tensor, Tensor | None, list[Tensor] | None]  # (logits, penultimate features, stage outputs)
StepTerms = Callable[[Tensor, Outputs, Outputs, Tensor, int], dict[str, Tensor]]  # (x, student, teacher, y, epoch)


@dataclass
class MethodObjective:
    """What the trainer's student stage needs from the configured method."""

    spec: MethodSpec
    params: dict[str, float]  # the method's parameters, defaults filled in
    step_terms: StepTerms  # returns {"method": weighted extra loss, ...unweighted parts}
    adapters: nn.Module | None  # extra trainable modules to optimise with the student (DML's peer)
    teacher: nn.Module
    prepare_batch: Callable[[Tensor], Tensor]  # applied to x before both networks see it

    @property
    def uses_logit_kd(self) -> bool:
        return self.spec.uses_logit_kd

    @property
    def uses_labels(self) -> bool:
        return self.spec.uses_labels

    @property
    def needs_teacher_forward(self) -> bool:
        """True: precomputed teacher logits will not do; run `teacher_outputs(x)` on every batch."""
        return self.spec.needs_teacher_forward

    @property
    def needs_teacher_features(self) -> bool:
        """True: `teacher_out[1]` (penultimate features) must be given; they can be precomputed."""
        return self.spec.needs_teacher_features

    @torch.no_grad()
    def teacher_outputs(self, x: Tensor) -> Outputs:
        """The frozen teacher on this batch: (logits float32, features, stages), without a graph."""
        logits, features, stages = self.teacher.forward_features(x)
        return logits.float(), features, stages


def method_objective(config: Any, student: nn.Module, teacher: nn.Module, data_info: Any) -> MethodObjective:
    """Build the objective of `config.method` for this student and (frozen) teacher.

    data_info: the dataset's `DatasetInfo` (input_shape, num_classes), used to build DML's peer.
    Raises ConfigError when the method does not suit the models (e.g. `at` with an MLP).
    """
    spec = method_spec(config.method)
    validate_method(config)  # refuses e.g. at on an MLP, with the config's own message
    params = resolve_params(config.method, config.method_params)
    if spec.needs_feature_maps:
        check_feature_maps(student, data_info.input_shape, "student", config.student.arch, spec.name)
        check_feature_maps(teacher, data_info.input_shape, "teacher", config.teacher.arch, spec.name)
    builder = _BUILDERS.get(spec.name, _no_terms)
    step_terms, adapters = builder(config, params, student, teacher, data_info)
    prepare = _mixup(params["mixup_alpha"], config.seed) if spec.name == "function_matching" else _identity
    return MethodObjective(spec, params, step_terms, adapters, teacher, prepare)


def _identity(x: Tensor) -> Tensor:
    return x


def _zero(x: Tensor) -> Tensor:
    return x.new_zeros((), dtype=torch.float32)


def _no_terms(config, params, student, teacher, data_info) -> tuple[StepTerms, None]:
    """kd, fitnets, multi_teacher, function_matching: everything is in the trainer's CE/KD/feature terms."""
    return (lambda x, student_out, teacher_out, y, epoch: {"method": _zero(student_out[0])}), None


def _last_stages(student_out: Outputs, teacher_out: Outputs, count: int, method: str) -> tuple[list[Tensor], list[Tensor]]:
    student_stages, teacher_stages = student_out[2], teacher_out[2]
    if student_stages is None or teacher_stages is None:
        raise RuntimeError(f"{method} needs the stage outputs of both networks: pass forward_features() results "
                           "and run the teacher on every batch (objective.needs_teacher_forward)")
    count = min(count, len(student_stages), len(teacher_stages))
    return list(student_stages[-count:]), list(teacher_stages[-count:])


def _features(out: Outputs, role: str, method: str) -> Tensor:
    if out[1] is None:
        raise RuntimeError(f"{method} needs the {role}'s penultimate features (forward_features()[1])")
    return out[1]


def _at(config, params, student, teacher, data_info):
    def step_terms(x, student_out, teacher_out, y, epoch):
        s, t = _last_stages(student_out, teacher_out, params["stages"], "at")
        at = losses.attention_transfer_loss(s, t, p=params["p"])
        return {"method": params["weight"] * at, "at": at.detach()}
    return step_terms, None


def _sp(config, params, student, teacher, data_info):
    def step_terms(x, student_out, teacher_out, y, epoch):
        s, t = _last_stages(student_out, teacher_out, params["stages"], "sp")
        sp = losses.similarity_preserving_loss(s, t)
        return {"method": params["weight"] * sp, "sp": sp.detach()}
    return step_terms, None


def _rkd(config, params, student, teacher, data_info):
    def step_terms(x, student_out, teacher_out, y, epoch):
        parts = losses.rkd_loss_parts(_features(student_out, "student", "rkd"), _features(teacher_out, "teacher", "rkd"))
        total = params["distance_weight"] * parts["distance"] + params["angle_weight"] * parts["angle"]
        return {"method": total, "rkd_distance": parts["distance"].detach(), "rkd_angle": parts["angle"].detach()}
    return step_terms, None


def _pkt(config, params, student, teacher, data_info):
    def step_terms(x, student_out, teacher_out, y, epoch):
        pkt = losses.pkt_loss(_features(student_out, "student", "pkt"), _features(teacher_out, "teacher", "pkt"))
        return {"method": params["weight"] * pkt, "pkt": pkt.detach()}
    return step_terms, None


def _dkd(config, params, student, teacher, data_info):
    temperature, warmup = config.temperature, params["warmup_epochs"]

    def step_terms(x, student_out, teacher_out, y, epoch):
        tckd, nckd = losses.dkd_terms(student_out[0], teacher_out[0], y, temperature)
        tckd, nckd = tckd.mean() * temperature**2, nckd.mean() * temperature**2
        ramp = min(epoch / warmup, 1.0) if warmup > 0 else 1.0  # the paper's linear warm-up, epochs 1-based
        total = ramp * (params["alpha"] * tckd + params["beta"] * nckd)
        return {"method": total, "tckd": tckd.detach(), "nckd": nckd.detach()}
    return step_terms, None


def _dist(config, params, student, teacher, data_info):
    def step_terms(x, student_out, teacher_out, y, epoch):
        value = losses.dist_loss(student_out[0], teacher_out[0], beta=params["beta"], gamma=params["gamma"],
                                 temperature=config.temperature)
        return {"method": value}
    return step_terms, None


def _dml(config, params, student, teacher, data_info):
    """The peer (teacher's architecture, fresh weights) is returned as the adapters: trained alongside."""
    from kdcore.models import build_model

    device = next(student.parameters()).device
    with torch.random.fork_rng(devices=[]):  # the peer's init must not shift the caller's random stream
        torch.manual_seed(config.seed + 1)
        peer = build_model(config.teacher.arch, data_info.input_shape, data_info.num_classes).to(device)

    def step_terms(x, student_out, teacher_out, y, epoch):
        peer_logits = peer(x)
        student_loss, peer_loss = losses.mutual_learning_loss([student_out[0], peer_logits], y, params["temperature"])
        return {"method": student_loss + peer_loss, "student_dml": student_loss.detach(), "peer_dml": peer_loss.detach()}
    return step_terms, peer


_BUILDERS = {"at": _at, "sp": _sp, "rkd": _rkd, "pkt": _pkt, "dkd": _dkd, "dist": _dist, "dml": _dml}


def _mixup(alpha: float, seed: int) -> Callable[[Tensor], Tensor]:
    """x → λ·x + (1 − λ)·x[perm], one λ ~ Beta(α, α) per batch (Zhang et al. 2018), seeded by the run."""
    if alpha <= 0:
        return _identity
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)

    def prepare(x: Tensor) -> Tensor:
        lam = rng.betavariate(alpha, alpha)
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        return lam * x + (1.0 - lam) * x[perm]
    return prepare


class TeacherEnsemble(nn.Module):
    """Several frozen teachers acting as one (the `multi_teacher` method).

    Its logits are T·log p̄ with p̄ the teachers' averaged softmax(z/T), so softmax(logits / T) = p̄
    exactly and every consumer of teacher logits (precomputed soft labels, kd_loss, validation KL)
    works unchanged at the run's temperature T. At other temperatures it is only an approximation
    of the ensemble. Features and stages are the first teacher's.
    """

    def __init__(self, teachers: list[nn.Module], temperature: float) -> None:
        super().__init__()
        if len(teachers) < 1:
            raise ValueError("TeacherEnsemble needs at least one teacher")
        self.members = nn.ModuleList(teachers)
        self.temperature = temperature
        self.feature_dim = getattr(teachers[0], "feature_dim", None)
        self.num_classes = getattr(teachers[0], "num_classes", None)

    def forward_features(self, x: Tensor) -> Outputs:
        outputs = [member.forward_features(x) for member in self.members]
        logits = ensemble_logits([out[0] for out in outputs], self.temperature)
        return logits, outputs[0][1], outputs[0][2]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def ensemble_logits(teacher_logits: list[Tensor], temperature: float) -> Tensor:
    """T · log(mean_k softmax(z_k / T)), in log space (finite for any finite logits): [B, C].

    softmax(ensemble_logits / T) = `losses.multi_teacher_soft_targets(teacher_logits, T)`.
    """
    log_probs = torch.stack([F.log_softmax(z.float() / temperature, dim=-1) for z in teacher_logits])
    log_mean = torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(teacher_logits))))
    return temperature * log_mean


def check_feature_maps(model: nn.Module, input_shape: tuple[int, ...], role: str, arch: str, method: str) -> None:
    """ConfigError unless `model` gives 4-D stage maps (a cheap forward on two zero inputs)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _, _, stages = model.forward_features(torch.zeros((2, *input_shape), device=device))
    model.train(was_training)
    if not stages or any(stage.dim() != 4 for stage in stages):
        raise ConfigError(f"{method} needs convolutional feature maps; {role} {arch} has none — pick cnn/resnet*")
