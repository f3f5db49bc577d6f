"""The plan of a run, the state of each stage, how far the run is and how long it has left."""

from __future__ import annotations

import math
import time
from typing import Any

STAGE_TITLES = {"teacher": "Teacher", "soft_labels": "Soft labels", "student": "Student",
                "finetune": "Fine-tune", "baseline": "Baseline"}
TRAINED_STAGES = ("teacher", "student", "finetune", "baseline")


def run_plan(config: dict[str, Any]) -> list[tuple[str, int]]:
    """(stage, epochs) in the order the trainer runs them, for a stored config dict.

    The teacher is listed with its epochs even though a cached teacher skips training; soft
    labels take no epochs. Fine-tune and baseline appear only when the config asks for them.
    """
    teacher = config.get("teacher") or {}
    epochs = int(config.get("epochs") or 0)
    finetune = int(config.get("finetune_epochs") or 0)
    plan = [] if teacher.get("checkpoint") else [("teacher", int(teacher.get("epochs") or 0))]
    plan += [("soft_labels", 0), ("student", epochs)]
    if finetune > 0:
        plan.append(("finetune", finetune))
    if config.get("baseline", True):
        plan.append(("baseline", epochs + finetune))
    return plan


def stage_states(plan: list[tuple[str, int]], progress: dict[str, Any] | None, status: str,
                 trained: set[str]) -> list[tuple[str, str]]:
    """(stage, state) for each planned stage; state is done, active, waiting, skipped or stopped.

    `trained` are the stages that reported metrics; a planned teacher that never did was
    reused (cache or checkpoint), so it shows as skipped once a later stage runs.
    """
    current = (progress or {}).get("stage")
    order = [stage for stage, _ in plan]
    position = order.index(current) if current in order else -1
    states = []
    for i, stage in enumerate(order):
        if status == "done" or i < position:
            state = "done" if stage in trained or stage == "soft_labels" else "skipped"
        elif i == position:
            state = "active" if status in ("starting", "running") else "stopped"
        else:
            state = "waiting"
        states.append((stage, state))
    return states


def stage_fraction(progress: dict[str, Any] | None) -> float | None:
    """How far the stage in training is, 0..1; None when it has no steps (soft labels) or no progress yet."""
    if not progress:
        return None
    total = (progress.get("epochs") or 0) * (progress.get("steps_per_epoch") or 0)
    if total <= 0:
        return None
    return min(max((progress.get("step") or 0) / total, 0.0), 1.0)


def stage_eta(progress: dict[str, Any] | None, now: float | None = None) -> float | None:
    """Seconds left in the current stage, from its pace so far; None until a step was reported."""
    fraction = stage_fraction(progress)
    if fraction is None or fraction <= 0 or not progress.get("stage_started"):
        return None
    elapsed = max((now if now is not None else time.time()) - progress["stage_started"], 0.0)
    return elapsed * (1.0 - fraction) / fraction


def run_eta(plan: list[tuple[str, int]], progress: dict[str, Any] | None, now: float | None = None) -> float | None:
    """Seconds left in the whole run, or None when the pace of the later stages cannot be guessed yet.

    Student, fine-tune and baseline train the same architecture on the same batches, so once one
    of them runs its seconds per epoch predict the others. During the teacher stage that is unknown.
    """
    left = stage_eta(progress, now)
    if left is None:
        return None
    current = progress.get("stage")
    order = [stage for stage, _ in plan]
    remaining_epochs = sum(epochs for _, epochs in plan[order.index(current) + 1:]) if current in order else 0
    if remaining_epochs == 0:
        return left
    if current not in ("student", "finetune", "baseline"):
        return None
    elapsed = max((now if now is not None else time.time()) - progress["stage_started"], 0.0)
    epochs_done = (stage_fraction(progress) or 0.0) * progress["epochs"]
    return left + remaining_epochs * elapsed / epochs_done


def format_duration(seconds: float | None) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`; an em dash for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
