"""Read-side shaping of a run's records for live views: series, smoothing, ETA, table rows.

Pure data, no torch, no SQLite, no Streamlit. A view keeps one `RunTrace` per run and feeds it
the rows that `Store.metrics_since` / `Store.snapshots_since` return after its cursor, so a long
run is read once, not on every poll.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from kdcore.callbacks import STAGES

STAGE_TITLES = {"teacher": "Teacher", "soft_labels": "Soft labels", "student": "Student",
                "finetune": "Fine-tune", "baseline": "Baseline"}
STEP_METRICS = ("train_loss", "train_ce", "train_kd", "train_feature")  # reported every step
TRAINED_STAGES = ("teacher", "student", "finetune", "baseline")


# --- the plan of a run ------------------------------------------------------------------------------


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
        if status == "done":
            state = "done" if stage in trained or stage == "soft_labels" else "skipped"
        elif i < position:
            state = "done" if stage in trained or stage == "soft_labels" else "skipped"
        elif i == position:
            state = "active" if status in ("starting", "running") else "stopped"
        else:
            state = "waiting"
        states.append((stage, state))
    return states


# --- progress and time left -----------------------------------------------------------------------------


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


# --- metrics, appended as they arrive ------------------------------------------------------------------------


@dataclass
class Series:
    """One metric of one stage: its steps, epochs and values, in arrival order."""

    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class RunTrace:
    """Everything a live view has read of one run so far, with the cursors to read on from.

    `started` is the run's start time when it was read: a resumed run starts again and its worker
    drops what it reported after the resumed epoch, so a view that sees a new start reads afresh.
    """

    run_id: str
    started: float | None = None
    metric_cursor: int = 0
    snapshot_cursor: int = 0
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    teacher_snapshot: dict[str, Any] | None = None
    student_snapshots: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add_metrics(self, rows: list[tuple]) -> None:
        """Rows as `Store.metrics_since` returns them: (id, stage, epoch, step, name, value, t)."""
        for _id, stage, epoch, step, name, value, _t in rows:
            series = self.series.get((stage, name))
            if series is None:
                series = self.series[(stage, name)] = Series()
            series.steps.append(int(step))
            series.epochs.append(int(epoch))
            series.values.append(float("nan") if value is None else float(value))

    def add_snapshots(self, snapshots: list[dict[str, Any]]) -> None:
        """Payloads as `Store.snapshots_since` returns them (stage, epoch and the trainer's fields)."""
        for snap in snapshots:
            if snap["stage"] == "soft_labels":
                self.teacher_snapshot = snap
            elif snap["stage"] == "student":
                self.student_snapshots[int(snap["epoch"])] = snap

    def get(self, stage: str, name: str) -> Series:
        return self.series.get((stage, name)) or Series()

    def stages_with(self, name: str) -> list[str]:
        """Stages that reported `name`, in pipeline order."""
        return [stage for stage in STAGES if (stage, name) in self.series]

    def trained_stages(self) -> set[str]:
        return {stage for stage, name in self.series if name == "train_loss"}

    @property
    def points(self) -> int:
        return sum(len(s) for (_, name), s in self.series.items() if name in STEP_METRICS)


def epoch_axis(stage: str, epochs: list[int], config: dict[str, Any]) -> list[int]:
    """Epochs on one axis across stages: fine-tuning continues after the student's epochs."""
    offset = int(config.get("epochs") or 0) if stage == "finetune" else 0
    return [e + offset for e in epochs]


# --- smoothing and thinning -------------------------------------------------------------------------------------


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard smooths), 0 ≤ weight < 1.

    Bias correction keeps the first points at the data instead of pulled towards 0.
    NaNs are skipped: they repeat the last smoothed value.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, last, n = [], 0.0, 0
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(out[-1] if out else float("nan"))
            continue
        n += 1
        last = weight * last + (1.0 - weight) * value
        out.append(last / (1.0 - weight**n))
    return out


def thin(xs: list, ys: list, max_points: int) -> tuple[list, list]:
    """At most about `max_points` evenly strided points, always keeping the last one."""
    if max_points <= 0:
        raise ValueError("max_points must be positive")
    if len(xs) <= max_points:
        return list(xs), list(ys)
    stride = math.ceil(len(xs) / max_points)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


# --- the teacher's reference accuracy ---------------------------------------------------------------------------

_TEACHER_VAL = re.compile(r"teacher_val_acc ([0-9.]+)")


def teacher_val_acc(summary: dict[str, Any] | None, trace: RunTrace, log_lines: list[str]) -> float | None:
    """The teacher's validation accuracy: from the summary, else its last epoch, else the log line
    of the soft-label stage (a cached or loaded teacher reports no epochs)."""
    if summary and summary.get("teacher_val_acc") is not None:
        return float(summary["teacher_val_acc"])
    series = trace.get("teacher", "val_acc")
    if series.values:
        return series.values[-1]
    for line in reversed(log_lines):
        match = _TEACHER_VAL.search(line)
        if match:
            return float(match.group(1))
    return None


# --- the runs table -------------------------------------------------------------------------------------------


def weights_label(weights: dict[str, Any]) -> str:
    """`ce 0.1 · kd 0.9` (+ `· feat 0.5`), zero weights left out."""
    parts = [(name, weights.get(key) or 0) for key, name in (("ce", "ce"), ("kd", "kd"), ("feature", "feat"))]
    return " · ".join(f"{name} {value:g}" for name, value in parts if value)


def run_row(record: Any, now: float | None = None) -> dict[str, Any]:
    """One row of the runs table for a `kdcore.store.RunRecord` (duck-typed: no store import)."""
    config, summary = record.config or {}, record.summary or {}
    teacher, student = config.get("teacher") or {}, config.get("student") or {}
    now = time.time() if now is None else now
    if summary.get("wall_s") is not None:
        wall = summary["wall_s"]
    elif record.started:
        wall = (record.ended or now) - record.started
    else:
        wall = None
    teacher_label = teacher.get("arch", "?") + (" (checkpoint)" if teacher.get("checkpoint") else "")
    return {
        "run": record.id,
        "name": record.name or "",
        "status": record.status,
        "dataset": config.get("dataset", "?"),
        "models": f"{teacher_label} → {student.get('arch', '?')}",
        "T": config.get("temperature"),
        "weights": weights_label(config.get("weights") or {}),
        "teacher_acc": summary.get("teacher_test_acc"),
        "student_acc": summary.get("student_test_acc"),
        "baseline_acc": summary.get("baseline_test_acc"),
        "wall_s": wall,
        "created": record.created,
        "error": record.error or "",
    }


def stored_teachers(records: list[Any]) -> list[dict[str, Any]]:
    """Distinct teachers trained by finished runs, newest first: what a new run can reuse.

    Each carries the teacher key, the source run and the settings a run must copy to get the
    same key (`RunConfig.teacher_key`, and so the cached teacher): dataset, data split, optimizer
    and all of teacher.*.
    """
    seen, out = set(), []
    for record in records:
        summary = record.summary or {}
        key = summary.get("teacher_key")
        if record.status != "done" or not key or key in seen:
            continue
        seen.add(key)
        config = record.config or {}
        out.append({
            "key": key,
            "run_id": record.id,
            "dataset": config.get("dataset"),
            "teacher": {**(config.get("teacher") or {}), "checkpoint": None},
            "shared": {k: config[k] for k in ("dataset", "data_root", "val_fraction", "optimizer", "weight_decay")
                       if k in config},
            "test_acc": summary.get("teacher_test_acc"),
            "params": summary.get("teacher_params"),
        })
    return out
