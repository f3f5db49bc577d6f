"""Recovery after pruning: a few epochs of distillation from the run's teacher (Hinton et al.'s KD).

A pruned student loses accuracy; learning again from the teacher's soft labels wins most of it back
in a few epochs (the pairing of pruning and distillation in Intel's Distiller). The recovery is the
run's own student stage on the one loop (`kdcore.train`): the same data, teacher and cached soft
labels (`kdcore.trainer.prepare`), the run's temperature and CE/KD weights, plain KD whatever the
run's method (a pruned network's features no longer fit a method's projector or memory bank), a
cosine learning rate from half the run's, and model selection on validation. Unstructured-pruned
weights are held at zero all along (`prune.hold_at_zero`).
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.compress.prune import apply_masks, hold_at_zero
from kdcore.trainer import Prepared, distill_stage
from kdcore.train import Progress, Single, StageResult, TrainState, fit_one

LR_FACTOR = 0.5  # of the run's lr: a pruned network starts near a good solution, not from scratch


def recovery_config(config: RunConfig, epochs: int) -> RunConfig:
    """The run's config as a plain-KD recovery stage of `epochs` epochs (the KD term kept on)."""
    ce, kd = (config.weights.ce, config.weights.kd) if config.weights.kd > 0 else (0.5, 0.5)
    return config.replace(**{"method": "kd", "method_params": {}, "weights.ce": ce, "weights.kd": kd,
                             "weights.feature": 0.0, "epochs": epochs, "lr": config.lr * LR_FACTOR,
                             "schedule": "cosine",  # a step schedule's milestones belong to the run's long budget
                             "finetune_epochs": 0, "baseline": False})


def recover(model: nn.Module, prep: Prepared, config: RunConfig, epochs: int, *,
            masks: dict[str, Tensor] | None = None, callback: Callback | None = None) -> StageResult:
    """Distil `model` (pruned, on prep.device) from the run's teacher for `epochs` epochs, in place: it ends
    with the weights of its best validation epoch. `masks` (from `magnitude_prune`) stay zero."""
    stage_config = recovery_config(config, epochs)
    members = Single(model)
    stage = dataclasses.replace(distill_stage([stage_config], members, prep), name="recovery", snapshot=None)
    release = hold_at_zero(model, masks) if masks else (lambda: None)
    try:
        state = TrainState.start(stage, members, stage_config, prep.device)
        result = fit_one(stage, state, prep.data, stage_config, prep.device, callback or Callback(), Progress(None))
    finally:
        release()
    model.load_state_dict(result.best_state)
    if masks:
        apply_masks(model, masks)  # already zero; this makes it a property of the function, not of the optimizer
    return result
