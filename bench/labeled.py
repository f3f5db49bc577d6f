"""The labelled-fraction experiment: how much of the teacher's lead does distillation recover when only a
few training labels are left?

    python bench/labeled.py [--fraction 0.1] [--seeds 0 1 2] [--set key=value ...] [--json]

For each seed, one run of the preset (`mnist-5k`, `cnn` teacher → `mlp-small` student) with
`labeled_fraction` set: the teacher is trained on every label (the bundled one, or trained once into
a temporary cache); the baseline is the student alone on the labelled fraction (a stratified 10%:
360 images), for as many optimizer steps as the distilled student; the distilled student learns
from those labels plus the teacher's soft labels on the whole training split. Prints per-seed test
accuracies and the gap closed = (student − baseline) / (teacher − baseline), from the means too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from kdcore.config import build_config
from kdcore.trainer import run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="kd-labeled-")
    rows = []
    for seed in args.seeds:
        config = build_config(None, [*args.overrides, f"labeled_fraction={args.fraction}", f"seed={seed}",
                                     "baseline=true"])
        started = time.perf_counter()
        s = run_pipeline(config, [], teacher_cache=cache)
        rows.append({"seed": seed, "teacher": s["teacher_test_acc"], "student": s["student_test_acc"],
                     "baseline": s["baseline_test_acc"], "gap_closed": s["gap_closed"],
                     "labeled_examples": s["labeled_examples"], "unlabeled_examples": s["unlabeled_examples"],
                     "teacher_source": s["teacher_source"], "wall_s": time.perf_counter() - started})
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("teacher", "student", "baseline", "wall_s")}
    gap = (mean["student"] - mean["baseline"]) / (mean["teacher"] - mean["baseline"])
    print(f"{config.dataset}, labeled_fraction {args.fraction:g}: {rows[0]['labeled_examples']} labelled, "
          f"{rows[0]['unlabeled_examples']} unlabelled training images")
    print(f"{'seed':>4} {'teacher':>8} {'student':>8} {'baseline':>8} {'gap closed':>10} {'wall s':>7}")
    for r in rows:
        print(f"{r['seed']:>4} {100 * r['teacher']:>7.2f}% {100 * r['student']:>7.2f}% {100 * r['baseline']:>7.2f}% "
              f"{100 * r['gap_closed']:>9.1f}% {r['wall_s']:>7.1f}")
    print(f"mean {100 * mean['teacher']:>7.2f}% {100 * mean['student']:>7.2f}% {100 * mean['baseline']:>7.2f}% "
          f"{100 * gap:>9.1f}% {mean['wall_s']:>7.1f}")
    if args.json:
        print(json.dumps({"runs": rows, "mean": mean, "student_minus_baseline": mean["student"] - mean["baseline"],
                          "gap_closed": gap, "config": config.to_dict(),
                          "machine": f"{platform.machine()} {os.cpu_count()} cores"}))


if __name__ == "__main__":
    main()
