"""Distillation after compression: recovery after pruning, and quantisation-aware fine-tuning.

A pruned model loses accuracy; learning again from soft labels wins most of it back in a few epochs
(the pairing of pruning and distillation in Intel's Distiller). What it learns from is a choice
(`CompressOptions.recover_from`):

    teacher     the run's teacher (Hinton et al.'s KD)
    unpruned    the model before pruning: the same function at full width, so the easiest to imitate
    both        the two as one ensemble: the average of their softened probabilities at the run's T

For the run's teacher itself, "teacher" and "unpruned" are the same model. The training is the run's
own student stage on the one loop (`kdcore.train`): the same data (labelled fraction and transfer set
included) and CE/KD weights at the run's temperature, plain KD whatever the run's method (a pruned
network's features no longer fit a method's projector or memory bank), a cosine learning rate from half
the run's (the teacher's for the teacher), and model selection on validation. Unstructured-pruned
weights are held at zero all along (`prune.hold_at_zero`). Quantisation-aware fine-tuning
(`kdcore.compress.qat`) is the same training with fake quantisation in the forward pass.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.compress.prune import apply_masks, hold_at_zero
from kdcore.methods.multi_teacher import TeacherEnsemble
from kdcore.soft_labels import SoftLabels
from kdcore.trainer import Prepared, distill_stage
from kdcore.train import Progress, Single, StageResult, TrainState, fit_one

LR_FACTOR = 0.5  # of the run's lr: a pruned network starts near a good solution, not from scratch


def recovery_config(config: RunConfig, epochs: int, role: str = "student") -> RunConfig:
    """The run's config as a plain-KD stage of `epochs` epochs (the KD term kept on). For the teacher: its
    own learning rate and batch size."""
    ce, kd = (config.weights.ce, config.weights.kd) if config.weights.kd > 0 else (0.5, 0.5)
    lr, batch = (config.teacher.lr, config.teacher.batch_size) if role == "teacher" else (config.lr, config.batch_size)
    return config.replace(**{"method": "kd", "method_params": {}, "weights.ce": ce, "weights.kd": kd,
                             "weights.feature": 0.0, "epochs": epochs, "lr": lr * LR_FACTOR, "batch_size": batch,
                             "schedule": "cosine",  # a step schedule's milestones belong to the run's long budget
                             "finetune_epochs": 0, "baseline": False})


def target_model(prep: Prepared, unpruned: nn.Module, source: str, role: str, temperature: float) -> nn.Module:
    """What the model learns from: the run's teacher, the unpruned model, or both as one ensemble (frozen)."""
    frozen = unpruned.to(prep.device).eval().requires_grad_(False)
    if role == "teacher" or source == "unpruned":
        return frozen  # the unpruned teacher is the run's teacher
    if source == "teacher":
        return prep.teacher.model
    return TeacherEnsemble.of([prep.teacher.model, frozen], temperature).eval()


def learning_from(prep: Prepared, target: nn.Module, config: RunConfig) -> Prepared:
    """`prep` with `target`'s outputs as the soft labels (the run's teacher's are kept as they are). Examples
    whose label the student may not use carry `target`'s class as their hard label."""
    if target is prep.teacher.model:
        return prep
    n, student_data = len(prep.data.train_x), prep.student_data
    transfer = student_data.train_x[n:] if len(student_data.train_x) > n else None
    soft = SoftLabels(target, prep.data, config, need_features=False, transfer=transfer)
    if student_data.train_labeled is not None:
        with torch.no_grad():
            y = torch.where(student_data.train_labeled, student_data.train_y, soft.predictions(student_data.train_x))
        student_data = dataclasses.replace(student_data, train_y=y)
    return dataclasses.replace(prep, soft=soft, student_data=student_data)


def recover(model: nn.Module, prep: Prepared, config: RunConfig, epochs: int, *, target: nn.Module | None = None,
            role: str = "student", masks: dict[str, Tensor] | None = None, callback: Callback | None = None,
            name: str = "recovery") -> StageResult:
    """Distil `model` (on prep.device) from `target` (default: the run's teacher) for `epochs` epochs, in place:
    it ends with the weights of its best validation epoch. `masks` (from `magnitude_prune`) stay zero."""
    stage_config = recovery_config(config, epochs, role)
    prep = learning_from(prep, target if target is not None else prep.teacher.model, stage_config)
    model.requires_grad_(True)  # a copy of the run's teacher comes frozen
    members = Single(model)
    stage = dataclasses.replace(distill_stage([stage_config], members, prep), name=name, snapshot=None)
    release = hold_at_zero(model, masks) if masks else (lambda: None)
    try:
        state = TrainState.start(stage, members, stage_config, prep.device)
        result = fit_one(stage, state, prep.student_data, stage_config, prep.device, callback or Callback(),
                         Progress(None))
    finally:
        release()
    model.load_state_dict(result.best_state)
    if masks:
        apply_masks(model, masks)  # already zero; this makes it a property of the function, not of the optimizer
    return result
