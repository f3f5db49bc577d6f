"""The confirmation's verdict: the tuned settings against the base config and the student alone, over seeds.

Each confirmation seed trains the tuned settings and the base config, with the student alone (same seed, same
budget) beside them; the test accuracy is read here for the first time in the study. Each side is a mean with
its 95% t-interval, and the comparisons are KD Lab's seed-noise verdicts (`kdcore.verdict.seed_verdict`,
paired by seed).
"""

from __future__ import annotations

from typing import Any

from kdcore.verdict import mean_interval, seed_verdict


def mean_ci(values: list[float]) -> dict[str, Any]:
    """Mean and the half-width of its 95% t-interval (None with one value)."""
    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    mean, half = mean_interval(values)
    return {"mean": mean, "ci95": half, "n": len(values)}


def confirm_verdict(tuned: dict[int, dict[str, Any]], default: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """From the summaries of the tuned and default runs by seed: each side's test accuracy, the student alone's,
    the gap each closes, and the seed-noise verdicts of tuned vs default and of each vs the student alone."""
    def by_seed(rows: dict[int, dict[str, Any]], key: str) -> dict[int, float]:
        return {seed: row[key] for seed, row in rows.items() if row.get(key) is not None}

    tuned_acc, default_acc = by_seed(tuned, "student_test_acc"), by_seed(default, "student_test_acc")
    alone = by_seed(tuned, "baseline_test_acc") or by_seed(default, "baseline_test_acc")
    teacher = [row["teacher_test_acc"] for row in (*tuned.values(), *default.values()) if row.get("teacher_test_acc")]
    out: dict[str, Any] = {"tuned": mean_ci(list(tuned_acc.values())), "default": mean_ci(list(default_acc.values())),
                           "alone": mean_ci(list(alone.values())),
                           "teacher_test_acc": sum(teacher) / len(teacher) if teacher else None}
    if out["teacher_test_acc"] is not None and out["alone"]["mean"] is not None:
        gap = out["teacher_test_acc"] - out["alone"]["mean"]
        for key in ("tuned", "default"):
            m = out[key]["mean"]
            out[key]["gap_closed"] = (m - out["alone"]["mean"]) / gap if m is not None and gap > 0 else None
    versus_default = seed_verdict(tuned_acc, default_acc)
    out["tuned_vs_default"] = versus_default.to_json()
    out["tuned"]["vs_alone"] = seed_verdict(tuned_acc, alone).to_json()
    out["default"]["vs_alone"] = seed_verdict(default_acc, alone).to_json()
    out["verdict"] = f"tuned vs default: {versus_default.text}"
    return out
