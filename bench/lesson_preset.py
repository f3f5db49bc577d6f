"""The search for a lesson preset whose distillation benefit is plain to see in a room.

    python bench/lesson_preset.py [--only NAME ...] [--seeds 0 1 2] [--json]

The bar (issue 13): on every one of 3 seeds the distilled student beats the student alone by at
least 2 points or closes at least 40% of the teacher–student gap, and each run (distilled student
plus its baseline) takes at most 15 s on 2 cores once the teacher exists. Each candidate runs once
per seed with its baseline; one teacher per candidate's teacher settings, trained before the timed
runs. Prints a table per candidate and, with --json, everything as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from kdcore.config import RunConfig
from kdcore.trainer import run_pipeline

MIN_POINTS, MIN_GAP_CLOSED, MAX_RUN_S = 2.0, 0.40, 15.0

# name → settings over RunConfig's defaults (the teaching preset). The lesson uses the first that meets the bar.
CANDIDATES: dict[str, dict] = {
    "preset-10ep": {"epochs": 10},
    "mlp-tiny": {"student.arch": "mlp-tiny"},
    "mlp32-a07": {"student.arch": "mlp:32", "weights.kd": 0.7, "weights.ce": 0.3},
    "half-data": {"val_fraction": 0.5},
    "half-data-a09-T8": {"val_fraction": 0.5, "weights.kd": 0.9, "weights.ce": 0.1, "temperature": 8},
    "digits-tiny": {"dataset": "digits", "student.arch": "mlp-tiny", "epochs": 30},
    "digits-half-tiny": {"dataset": "digits", "val_fraction": 0.5, "student.arch": "mlp-tiny", "epochs": 40},
    "augment-a09": {"augment": True, "weights.kd": 0.9, "weights.ce": 0.1, "epochs": 15},
    # The student keeps the labels of a stratified share of the training set; the teacher labels all of it.
    "labels-10pct": {"labeled_fraction": 0.1},
    "labels-5pct": {"labeled_fraction": 0.05},
    "labels-10pct-a09": {"labeled_fraction": 0.1, "weights.kd": 0.9, "weights.ce": 0.1},
    "digits-labels-10pct": {"dataset": "digits", "labeled_fraction": 0.1},
}


def run_candidate(name: str, settings: dict, seeds: list[int], cache: str) -> dict:
    base = RunConfig().replace(**settings, baseline=True)
    run_pipeline(base.replace(epochs=1, baseline=False), [], teacher_cache=cache)  # the teacher, untimed
    rows = []
    for seed in seeds:
        config = base.replace(seed=seed)
        started = time.perf_counter()
        s = run_pipeline(config, [], teacher_cache=cache)
        wall = time.perf_counter() - started
        points = 100 * (s["student_test_acc"] - s["baseline_test_acc"])
        gap = s["gap_closed"]
        rows.append({"seed": seed, "teacher": s["teacher_test_acc"], "student": s["student_test_acc"],
                     "baseline": s["baseline_test_acc"], "points": points, "gap_closed": gap, "wall_s": wall,
                     "meets": (points >= MIN_POINTS or (gap is not None and gap >= MIN_GAP_CLOSED))
                     and wall <= MAX_RUN_S})
    return {"name": name, "settings": settings, "runs": rows, "meets_bar": all(r["meets"] for r in rows),
            "worst_points": min(r["points"] for r in rows), "max_wall_s": max(r["wall_s"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, choices=list(CANDIDATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="kd-lesson-")
    results = []
    for name in args.only or CANDIDATES:
        result = run_candidate(name, CANDIDATES[name], args.seeds, cache)
        results.append(result)
        print(f"{name}: {result['settings']}  meets the bar: {'yes' if result['meets_bar'] else 'no'}", flush=True)
        for r in result["runs"]:
            gap = "-" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f}%"
            print(f"  seed {r['seed']}: teacher {100 * r['teacher']:.2f}%  distilled {100 * r['student']:.2f}%  "
                  f"alone {100 * r['baseline']:.2f}%  Δ {r['points']:+.2f} pts  gap closed {gap}  {r['wall_s']:.1f} s",
                  flush=True)
    if args.json:
        print(json.dumps({"results": results, "bar": {"min_points": MIN_POINTS, "min_gap_closed": MIN_GAP_CLOSED,
                                                      "max_run_s": MAX_RUN_S},
                          "machine": f"{platform.machine()} {os.cpu_count()} cores"}))


if __name__ == "__main__":
    main()
