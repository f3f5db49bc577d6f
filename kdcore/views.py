"""Read-side shaping of run records for the app: series, smoothing, ETA, table rows, comparisons,
sweep aggregates, the lab's choice of samples.

Pure data, no torch, no SQLite, no Streamlit. A view keeps one `RunTrace` per run and feeds it
the rows that `Store.metrics_since` / `Store.snapshots_since` return after its cursor, so a long
run is read once, not on every poll.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from kdcore.callbacks import STAGES
from kdcore.config import flatten

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


# --- comparing runs ----------------------------------------------------------------------------------------------

X_AXES = {"step": "step", "epoch": "epoch", "wall": "wall time (s since the run started)"}


def compare_series(rows: list[tuple], stage: str, name: str, *, x: str = "step",
                   starts: dict[str, float | None] | None = None) -> dict[str, tuple[list[float], list[float]]]:
    """One metric of one stage per run, as (xs, ys), from `Store.metrics_for` rows
    (run_id, stage, epoch, step, name, value, t).

    x: "step" (the stage's step), "epoch" (per-step metrics at fractional epochs, step / steps per
    epoch; per-epoch metrics at their epoch) or "wall" (seconds since the run started; `starts`
    maps run id → start time, the first row's time when missing).
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    picked: dict[str, list[tuple]] = {}
    for row in rows:
        if row[1] == stage and row[4] == name:
            picked.setdefault(row[0], []).append(row)
    out = {}
    for run_id, mine in picked.items():
        ys = [float("nan") if value is None else float(value) for *_, value, _t in mine]
        if x == "step":
            xs = [float(step) for _r, _s, _e, step, *_ in mine]
        elif x == "epoch" and name in STEP_METRICS:
            per_epoch: dict[int, int] = {}
            for _r, _s, epoch, *_ in mine:
                per_epoch[epoch] = per_epoch.get(epoch, 0) + 1
            steps_per_epoch = max(per_epoch.values())  # a finished epoch has them all
            xs = [step / steps_per_epoch for _r, _s, _e, step, *_ in mine]
        elif x == "epoch":
            xs = [float(epoch) for _r, _s, epoch, *_ in mine]
        else:
            start = (starts or {}).get(run_id) or mine[0][6]
            xs = [t - start for *_, t in mine]
        out[run_id] = (xs, ys)
    return out


# --- sweeps --------------------------------------------------------------------------------------------------------

SWEEP_METRICS = {"student_test_acc": "student test accuracy", "gap_closed": "gap closed",
                 "student_minus_baseline": "student − baseline (test accuracy)",
                 "baseline_test_acc": "baseline test accuracy", "teacher_test_acc": "teacher test accuracy",
                 "test_agreement": "student–teacher agreement (test)"}
ACCURACY_METRICS = {"student_test_acc", "baseline_test_acc", "teacher_test_acc", "test_agreement"}


def dotted_value(config: dict[str, Any], key: str) -> Any:
    """`config["teacher"]["arch"]` for "teacher.arch" (and `method.x` for method_params.x, as `--set` reads it)."""
    parts = key.split(".")
    if parts[0] == "method" and len(parts) == 2:
        parts[0] = "method_params"
    node: Any = config
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def sweep_rows(records: list[Any], keys: list[str]) -> list[dict[str, Any]]:
    """One row per run of a sweep: id, status, the swept values (as the run's config holds them) and
    the final numbers of its summary, with student − baseline beside them (None while unknown)."""
    rows = []
    for record in records:
        summary = record.summary or {}
        row: dict[str, Any] = {"run_id": record.id, "status": record.status}
        row.update({key: dotted_value(record.config or {}, key) for key in keys})
        for metric in SWEEP_METRICS:
            row[metric] = summary.get(metric)
        student, baseline = summary.get("student_test_acc"), summary.get("baseline_test_acc")
        row["student_minus_baseline"] = None if student is None or baseline is None else student - baseline
        rows.append(row)
    return rows


def axis_values(rows: list[dict[str, Any]], key: str) -> list[Any]:
    """The distinct values of a swept key, sorted when they are all numbers, else in order of appearance."""
    values: list[Any] = []
    for row in rows:
        if row.get(key) not in values:
            values.append(row.get(key))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        values.sort()
    return values


def aggregate(rows: list[dict[str, Any]], by: list[str], metric: str) -> list[dict[str, Any]]:
    """Mean, sample standard deviation (0 for one value) and count of `metric` per combination of the
    `by` keys, over the runs that have it (the other swept keys, seeds for one, are averaged over)."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        value = row.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            groups.setdefault(tuple(repr(row.get(k)) for k in by), []).append(float(value))
    out, seen = [], set()
    for row in rows:
        group = tuple(repr(row.get(k)) for k in by)
        if group in seen or group not in groups:
            continue
        seen.add(group)
        values = groups[group]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out.append({**{k: row.get(k) for k in by}, "mean": mean, "std": std, "n": len(values)})
    return out


def sweep_progress(records: list[Any]) -> dict[str, int]:
    """Runs of a sweep by status (every status present, zeros included), and `finished` of `total`."""
    counts = {status: 0 for status in ("queued", "starting", "running", "done", "failed", "cancelled")}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    counts["total"] = len(records)
    counts["finished"] = counts["done"] + counts["failed"] + counts["cancelled"]
    return counts


ROUGH_RUN_S = 60.0  # a teaching-preset run on 2 CPU cores; used until this store has a finished run to go by


def typical_run_s(records: list[Any], config: dict[str, Any]) -> tuple[float, str]:
    """Seconds one run of `config` will likely take in a sweep, and where that guess comes from.

    From up to 20 recent finished runs on the same dataset, scaled by student epochs (the baseline's
    counted): a run alone by its wall time, the runs of a sweep by the sweep's span divided by its
    runs (they train together, so each one's own wall time is the whole group's). The median of
    those; ROUGH_RUN_S when there are none.
    """
    def budget(c: dict[str, Any]) -> int:
        epochs = int(c.get("epochs") or 1) + int(c.get("finetune_epochs") or 0)
        return epochs * (2 if c.get("baseline", True) else 1)

    done = [r for r in records if r.status == "done" and r.started is not None and r.ended is not None
            and (r.config or {}).get("dataset") == config.get("dataset")]
    sweeps: dict[str, list[Any]] = {}
    estimates = []
    for record in done:
        if record.sweep_id:
            sweeps.setdefault(record.sweep_id, []).append(record)
        else:
            wall = (record.summary or {}).get("wall_s") or record.ended - record.started
            estimates.append(wall * budget(config) / budget(record.config))
    for runs in sweeps.values():
        span = max(r.ended for r in runs) - min(r.started for r in runs)
        estimates += [span / len(runs) * budget(config) / budget(r.config) for r in runs]
    estimates = estimates[:20]
    if not estimates:
        return ROUGH_RUN_S, "a rough guess: no run on this dataset has finished in this store yet"
    estimates.sort()
    return estimates[len(estimates) // 2], f"from {len(estimates)} recent {config.get('dataset')} run(s) in this store"


# --- the temperature lab -----------------------------------------------------------------------------------------

SAMPLE_CHOICES = {"per_class": "one per class", "uncertain": "least confident", "wrong": "misclassified",
                  "random": "random"}


def pick_samples(labels: list[int], predictions: list[int], confidences: list[float], how: str, count: int,
                 seed: int = 0) -> list[int]:
    """Indices of up to `count` validation samples to show in the lab.

    per_class: the first sample of each class in class order, then the second of each, and so on;
    uncertain: the lowest teacher
    confidence (max probability at T = 1) first; wrong: misclassified, most confident first (the
    teacher's most telling mistakes); random: a seeded draw.
    """
    if how not in SAMPLE_CHOICES:
        raise ValueError(f"how must be one of {', '.join(SAMPLE_CHOICES)}, got {how!r}")
    n = len(labels)
    if how == "per_class":
        by_class: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            by_class.setdefault(int(label), []).append(i)
        rounds = itertools.zip_longest(*(by_class[c] for c in sorted(by_class)))
        return [i for round_ in rounds for i in round_ if i is not None][:count]
    if how == "uncertain":
        return sorted(range(n), key=lambda i: (confidences[i], i))[:count]
    if how == "wrong":
        wrong = [i for i in range(n) if predictions[i] != labels[i]]
        return sorted(wrong, key=lambda i: (-confidences[i], i))[:count]
    import random

    return sorted(random.Random(seed).sample(range(n), min(count, n)))


# --- the method table ------------------------------------------------------------------------------------------

# Settings that may differ between the runs of one method table: what a method needs (its name, its
# parameters, a feature weight for FitNets), the seeds it averages over, and what does not change
# the numbers. Any other difference (epochs, temperature, ...) makes a cell mix unlike runs.
METHOD_TABLE_FREE = ("seed", "teacher.seed", "method", "method_params", "weights", "name", "baseline", "device",
                     "amp", "compile", "data_root", "teacher.checkpoint")


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (0 for a single value) of `n` values."""

    mean: float
    std: float
    n: int


def mean_std(values: list[float]) -> MeanStd | None:
    """The MeanStd of the finite values, None when there are none."""
    clean = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not clean:
        return None
    mean = sum(clean) / len(clean)
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)) if len(clean) > 1 else 0.0
    return MeanStd(mean, std, len(clean))


def format_mean_std(cell: MeanStd | None, scale: float = 100.0, digits: int = 2) -> str:
    """`97.12 ± 0.31` (percentage points by default), as published tables print accuracy; a single
    value has no spread to show, so it prints alone; an em dash for none."""
    if cell is None:
        return "—"
    mean = f"{scale * cell.mean:.{digits}f}"
    return mean if cell.n < 2 else f"{mean} ± {scale * cell.std:.{digits}f}"


def _free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in METHOD_TABLE_FREE)


def _differing_settings(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Settings outside METHOD_TABLE_FREE on which these configs disagree: key → the distinct values."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    out = {}
    for key in keys:
        if _free(key):
            continue
        values: list[Any] = []
        for f in flat:
            if f.get(key) not in values:
                values.append(f.get(key))
        if len(values) > 1:
            out[key] = sorted(values, key=repr)
    return out


def method_table(records: list[Any]) -> list[dict[str, Any]]:
    """The method table of finished runs, in the style of the published CIFAR-100 tables: one row per
    (dataset, teacher arch, student arch), most runs first.

    A row: `dataset`, `teacher`, `student`, `runs` (how many), `teacher_acc` and `baseline_acc`
    (MeanStd of the test accuracy of the distinct teachers — multi_teacher runs report an ensemble,
    so they are left out — and of the student alone over the runs that trained one), `methods` (in
    the registry's order: name → `acc`, the MeanStd of the student's test accuracy over its runs,
    i.e. its seeds; `delta`, its mean minus the student alone's; `gap_closed`, (method − student
    alone) / (teacher − student alone) from the means, None unless the teacher leads; `run_ids`),
    and `differs`: settings on which the row's runs disagree beyond seeds and method (key → values).
    """
    from kdcore.methods import METHODS

    groups: dict[tuple[str, str, str], list[Any]] = {}
    for record in records:
        summary, config = record.summary or {}, record.config or {}
        if record.status != "done" or not isinstance(summary.get("student_test_acc"), (int, float)):
            continue
        key = (config.get("dataset", "?"), (config.get("teacher") or {}).get("arch", "?"),
               (config.get("student") or {}).get("arch", "?"))
        groups.setdefault(key, []).append(record)
    rows = []
    for (dataset, teacher, student), runs in groups.items():
        teachers: dict[str, float] = {}
        by_method: dict[str, list[Any]] = {}
        for record in runs:
            summary, config = record.summary or {}, record.config or {}
            method = config.get("method", "kd")
            by_method.setdefault(method, []).append(record)
            if method != "multi_teacher" and summary.get("teacher_test_acc") is not None:
                identity = summary.get("teacher_key") or (config.get("teacher") or {}).get("checkpoint") or record.id
                teachers.setdefault(identity, summary["teacher_test_acc"])
        teacher_acc = mean_std(list(teachers.values()))
        baseline_acc = mean_std([(r.summary or {}).get("baseline_test_acc") for r in runs])
        order = [m for m in METHODS if m in by_method] + sorted(m for m in by_method if m not in METHODS)
        methods = {}
        for method in order:
            acc = mean_std([r.summary["student_test_acc"] for r in by_method[method]])
            delta = acc.mean - baseline_acc.mean if baseline_acc else None
            gap = (teacher_acc.mean - baseline_acc.mean) if teacher_acc and baseline_acc else 0.0
            methods[method] = {"acc": acc, "delta": delta, "gap_closed": delta / gap if gap > 0 else None,
                               "run_ids": [r.id for r in by_method[method]]}
        rows.append({"dataset": dataset, "teacher": teacher, "student": student, "runs": len(runs),
                     "teacher_acc": teacher_acc, "baseline_acc": baseline_acc, "methods": methods,
                     "differs": _differing_settings([r.config or {} for r in runs])})
    rows.sort(key=lambda row: -row["runs"])
    return rows


def method_table_label(row: dict[str, Any]) -> str:
    """`digits · cnn-small → mlp-tiny · 12 runs, 4 methods`: a row of `method_table` in a picker."""
    methods = len(row["methods"])
    runs = row["runs"]
    return (f"{row['dataset']} · {row['teacher']} → {row['student']} · {runs} run{'s' if runs != 1 else ''}, "
            f"{methods} method{'s' if methods != 1 else ''}")


def method_table_columns(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row of `method_table` as the table's columns, in order: the teacher, the student alone, then
    each method. Each: `column` (teacher, student alone, or the method's name), `acc` (MeanStd or None),
    `delta`, `gap_closed` (None for the references) and `runs` (how many values the cell averages)."""
    columns = [{"column": "teacher", "acc": row["teacher_acc"], "delta": None, "gap_closed": None},
               {"column": "student alone", "acc": row["baseline_acc"], "delta": None, "gap_closed": None}]
    columns += [{"column": name, "acc": cell["acc"], "delta": cell["delta"], "gap_closed": cell["gap_closed"]}
                for name, cell in row["methods"].items()]
    for column in columns:
        column["runs"] = column["acc"].n if column["acc"] else 0
    return columns


def method_table_csv_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`method_table` rows in long form, one line per (pair, column), with plain numbers (fractions,
    not percentages): what the Methods page offers as CSV."""
    out = []
    for row in rows:
        for column in method_table_columns(row):
            acc = column["acc"]
            out.append({"dataset": row["dataset"], "teacher": row["teacher"], "student": row["student"],
                        "column": column["column"], "test_acc_mean": acc.mean if acc else None,
                        "test_acc_std": acc.std if acc else None, "runs": column["runs"],
                        "minus_student_alone": column["delta"], "gap_closed": column["gap_closed"]})
    return out
