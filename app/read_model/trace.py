"""One run's series as a live view reads them, a cursor at a time; smoothing and thinning for the charts.

A view keeps one `RunTrace` per run and feeds it the rows that `Store.metrics_since` /
`Store.snapshots_since` return after its cursor, so a long run is read once, not on every poll.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.read_model.series import Line, is_step_series, step_lines
from kdcore.callbacks import STAGES


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

    def add_metrics(self, rows: Iterable[tuple]) -> None:
        """Rows as `Store.metrics_since` returns them: `MetricRow`s (id, stage, epoch, step, name, value, t)."""
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

    def names(self, stage: str) -> list[str]:
        """The series this stage recorded, in arrival order."""
        return [name for s, name in self.series if s == stage]

    def stages_with(self, name: str) -> list[str]:
        """Stages that reported `name`, in pipeline order."""
        return [stage for stage in STAGES if (stage, name) in self.series]

    def trained_stages(self) -> set[str]:
        return {stage for stage, name in self.series if name == "train_loss"}

    def step_lines(self, stage: str, method: str | None) -> list[Line]:
        """The stage's per-step series, labelled and ordered by the run's method (`series.step_lines`)."""
        return step_lines(method, self.names(stage))

    @property
    def points(self) -> int:
        """Per-step rows read so far, over every stage and term."""
        return sum(len(s) for (_, name), s in self.series.items() if is_step_series(name))


def epoch_axis(stage: str, epochs: list[int], config: dict[str, Any]) -> list[int]:
    """Epochs on one axis across stages: fine-tuning continues after the student's epochs."""
    offset = int(config.get("epochs") or 0) if stage == "finetune" else 0
    return [e + offset for e in epochs]


def teacher_val_acc(summary: dict[str, Any] | None, trace: RunTrace,
                    stage_results: dict[str, dict[str, Any]]) -> float | None:
    """The teacher's validation accuracy: from the summary, else its last epoch, else what the soft-label
    stage recorded when it ended (a cached or loaded teacher reports no epochs; `Store.stage_results`)."""
    if summary and summary.get("teacher_val_acc") is not None:
        return float(summary["teacher_val_acc"])
    series = trace.get("teacher", "val_acc")
    if series.values:
        return series.values[-1]
    for stage, key in (("soft_labels", "teacher_val_acc"), ("teacher", "val_acc")):
        value = (stage_results.get(stage) or {}).get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None


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
