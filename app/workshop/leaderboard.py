"""What the room sees of its runs: the challenge's leaderboard, the room sweep's curve, predictions against outcomes.

Pure data from `RunRecord`s (duck-typed: `id`, `owner`, `status`, `config`, `summary`, `created`).
The leaderboard ranks by validation accuracy, never test accuracy: the test split is for the end,
when the instructor reveals it.
"""

from __future__ import annotations

import statistics
from typing import Any

from app.workshop import policy


def challenge_problem(record: Any, challenge: Any) -> str | None:
    """Why a finished run does not compete in the challenge (None: it does): the limits a challenge entry
    is held to when submitted (`policy.challenge_problems`), on the parameters the run reported."""
    summary = record.summary or {}
    if not record.owner:
        return "no owner"
    if record.created < challenge.started:
        return "started before the challenge"
    problems = policy.challenge_problems(record.config or {}, challenge, summary.get("student_params"))
    return "; ".join(problems) or None


def val_gap_closed(summary: dict[str, Any]) -> float | None:
    """(student − baseline) / (teacher − baseline), on validation accuracy; None without a baseline."""
    student, baseline, teacher = (summary.get(k) for k in ("student_val_acc", "baseline_val_acc", "teacher_val_acc"))
    if None in (student, baseline, teacher) or teacher - baseline <= 0:
        return None
    return (student - baseline) / (teacher - baseline)


def leaderboard(records: list[Any], challenge: Any) -> list[dict[str, Any]]:
    """Each owner's best finished challenge run, ranked by validation accuracy (ties: fewer parameters,
    then the earlier run). Test accuracy is filled only once the challenge is revealed."""
    best: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for record in records:
        if record.status != "done" or challenge_problem(record, challenge) is not None:
            continue
        summary = record.summary or {}
        row = {"owner": record.owner, "run": record.id, "student": (record.config.get("student") or {}).get("arch"),
               "params": summary.get("student_params"), "val_acc": summary.get("student_val_acc"),
               "gap_closed": val_gap_closed(summary), "T": record.config.get("temperature"),
               "method": record.config.get("method", "kd"),
               "test_acc": summary.get("student_test_acc") if challenge.revealed else None, "created": record.created}
        counts[record.owner] = counts.get(record.owner, 0) + 1
        if row["val_acc"] is None:
            continue
        current = best.get(record.owner)
        if current is None or _order(row) < _order(current):
            best[record.owner] = row
    ranked = sorted(best.values(), key=_order)
    for rank, row in enumerate(ranked, start=1):
        row["rank"], row["runs"] = rank, counts[row["owner"]]
    return ranked


def _order(row: dict[str, Any]) -> tuple:
    return (-row["val_acc"], row["params"] or 0, row["created"])


def sweep_curve(records: list[Any], key: str) -> dict[str, Any]:
    """The room sweep's points along `key` (e.g. temperature): every finished run's distilled and
    alone test accuracy with its owner, the mean at each value, and how many runs are still going."""
    points, active = [], 0
    for record in records:
        if record.status in ("queued", "starting", "running"):
            active += 1
            continue
        summary = record.summary or {}
        if record.status != "done" or summary.get("student_test_acc") is None:
            continue
        points.append({"x": _dotted(record.config, key), "owner": record.owner or "", "run": record.id,
                       "student": summary["student_test_acc"], "baseline": summary.get("baseline_test_acc")})
    means = []
    for x in sorted({p["x"] for p in points}):
        at = [p for p in points if p["x"] == x]
        baselines = [p["baseline"] for p in at if p["baseline"] is not None]
        means.append({"x": x, "student": statistics.mean(p["student"] for p in at), "n": len(at),
                      "baseline": statistics.mean(baselines) if baselines else None})
    return {"points": points, "means": means, "active": active}


def _dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = (node or {}).get(part) if isinstance(node, dict) else None
    return node


def predictions_vs_outcomes(predictions: list[dict[str, Any]], records: dict[str, Any]) -> list[dict[str, Any]]:
    """Each prediction (points by which distilled beats alone) beside what its run measured."""
    rows = []
    for p in predictions:
        record = records.get(p.get("run_id"))
        summary = (record.summary or {}) if record is not None else {}
        student, baseline = summary.get("student_test_acc"), summary.get("baseline_test_acc")
        outcome = 100 * (student - baseline) if student is not None and baseline is not None else None
        rows.append({"name": p["name"], "predicted": p["value"], "outcome": outcome,
                     "error": None if outcome is None else p["value"] - outcome,
                     "status": record.status if record is not None else ("not run yet" if not p.get("run_id")
                                                                          else "deleted")})
    return rows
