"""The runs table, and the teachers of finished runs that a new run can reuse."""

from __future__ import annotations

import time
from typing import Any


def weights_label(weights: dict[str, Any]) -> str:
    """`ce 0.1 · kd 0.9` (+ `· feat 0.5`), zero weights left out."""
    parts = [(name, weights.get(key) or 0) for key, name in (("ce", "ce"), ("kd", "kd"), ("feature", "feat"))]
    return " · ".join(f"{name} {value:g}" for name, value in parts if value)


def labels_label(config: dict[str, Any], recorded: dict[str, Any]) -> str | None:
    """What the student learns from, when it is not simply every labelled training example: the labelled and
    unlabelled counts the run recorded (`soft_labels` stage results), or what the config asks until then."""
    fraction, transfer = config.get("labeled_fraction", 1.0), config.get("transfer")
    if fraction >= 1 and not transfer:
        return None
    source = f" + transfer set **{transfer}**" if transfer else ""
    if "labeled_examples" not in recorded:
        return f"Student: hard labels for {100 * fraction:g}% of the training split{source}; the teacher labels the rest."
    labeled, unlabeled = int(recorded["labeled_examples"]), int(recorded["unlabeled_examples"])
    extra = int(recorded.get("transfer_examples", 0))
    return (f"Student: **{labeled:,} labelled** examples and **{unlabeled:,} unlabelled** ones the teacher labels"
            + (f" ({extra:,} of them from {transfer})" if extra else "")
            + f" · baseline: the {labeled:,} labelled alone, for as many steps")


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
        "owner": getattr(record, "owner", None) or "",
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
    same key (`RunConfig.teacher_key`, and so the cached teacher): dataset, data split, optimizer and its
    schedule, and all of teacher.*.
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
            "shared": {k: config[k] for k in ("dataset", "data_root", "val_fraction", "optimizer", "weight_decay",
                                              "momentum", "nesterov", "schedule", "lr_milestones", "lr_decay",
                                              "text_column", "label_column")
                       if k in config},
            "student_arch": (config.get("student") or {}).get("arch"),  # one that fits the data, for a config to load it
            "test_acc": summary.get("teacher_test_acc"),
            "params": summary.get("teacher_params"),
        })
    return out

