"""Sweeps: a row per run with its swept values and final numbers, means over seeds, progress, and how
long one more run will likely take."""

from __future__ import annotations

import math
from typing import Any

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

