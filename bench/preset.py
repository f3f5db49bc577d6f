"""The teaching preset's experiment: does the distilled student beat the student trained alone?

    python bench/preset.py [--seeds 0 1 2] [--set key=value ...] [--json]

Runs the default preset (or it with `--set` changes) once per seed, each with its baseline, and
prints per-seed test accuracies of teacher, distilled student and baseline, the mean difference,
and the gap closed = (student − baseline) / (teacher − baseline). One teacher serves every seed
(its seed is `teacher.seed`), trained in the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from kdcore.config import RunConfig, build_config
from kdcore.trainer import run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows, config = run_seeds(args.overrides, args.seeds, "kd-preset-", extra=("teacher_cached",))
    report(rows, config, args.json)


def run_seeds(overrides: list[str], seeds: list[int], cache_prefix: str,
              extra: tuple[str, ...] = ()) -> tuple[list[dict], RunConfig]:
    """One run with its baseline per seed (the config `overrides` give), sharing one teacher cache; a row per
    seed of test accuracies, gap closed, wall time and the summary's `extra` keys, and the last config."""
    cache = tempfile.mkdtemp(prefix=cache_prefix)
    rows = []
    for seed in seeds:
        config = build_config(None, [*overrides, f"seed={seed}", "baseline=true"])
        started = time.perf_counter()
        s = run_pipeline(config, [], teacher_cache=cache)
        rows.append({"seed": seed, "teacher": s["teacher_test_acc"], "student": s["student_test_acc"],
                     "baseline": s["baseline_test_acc"], "gap_closed": s["gap_closed"],
                     "wall_s": time.perf_counter() - started, **{key: s[key] for key in extra}})
    return rows, config


def report(rows: list[dict], config: RunConfig, as_json: bool) -> None:
    """Print the per-seed table, the means and the gap closed of the means (and all of it as JSON)."""
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("teacher", "student", "baseline", "wall_s")}
    # the gap closed means nothing when the teacher is no better than the student alone (None in a run's summary)
    gap = ((mean["student"] - mean["baseline"]) / (mean["teacher"] - mean["baseline"])
           if mean["teacher"] > mean["baseline"] else None)

    def share(value: float | None) -> str:
        return f"{100 * value:>9.1f}%" if value is not None else f"{'–':>10}"

    print(f"{'seed':>4} {'teacher':>8} {'student':>8} {'baseline':>8} {'gap closed':>10} {'wall s':>7}")
    for r in rows:
        print(f"{r['seed']:>4} {100 * r['teacher']:>7.2f}% {100 * r['student']:>7.2f}% {100 * r['baseline']:>7.2f}% "
              f"{share(r['gap_closed'])} {r['wall_s']:>7.1f}")
    print(f"mean {100 * mean['teacher']:>7.2f}% {100 * mean['student']:>7.2f}% {100 * mean['baseline']:>7.2f}% "
          f"{share(gap)} {mean['wall_s']:>7.1f}")
    if as_json:
        print(json.dumps({"runs": rows, "mean": mean, "student_minus_baseline": mean["student"] - mean["baseline"],
                          "gap_closed": gap, "config": config.to_dict(),
                          "machine": f"{platform.machine()} {os.cpu_count()} cores"}))


if __name__ == "__main__":
    main()
