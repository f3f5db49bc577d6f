"""What training one run on 2 CPU processes (devices=2, gloo) costs against one process.

    python bench/ddp.py [--repeats 3] [--json]

The same run (digits, MLP teacher and student, baseline off, no cache) with devices=1 and devices=2,
interleaved: wall time of each (median of the repeats), their ratio, the student's training rate
(samples/s over its epochs, the peer's start and the teacher excluded), and the accuracies, which must
agree (the tests check every step). On a machine with N cores the 2 processes share them: this is the
overhead of the collectives (one gradient all-reduce per step; the loss all-reduce and rank 0's stop
flags per 25 steps) and of starting a peer, not a speed-up; on GPUs each process has its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from kdcore.config import RunConfig
from kdcore.trainer import run_pipeline

CONFIG = {"dataset": "digits", "teacher": {"arch": "mlp", "epochs": 5, "batch_size": 64}, "student": {"arch": "mlp-small"},
          "epochs": 10, "batch_size": 64, "baseline": False}


def timed(devices: int) -> tuple[float, dict]:
    config = RunConfig.from_dict({**CONFIG, "devices": devices})
    started = time.perf_counter()
    summary = run_pipeline(config, [])
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    timed(1)  # warm: imports, the dataset read once
    walls: dict[int, list[float]] = {1: [], 2: []}
    accs: dict[int, float] = {}
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for devices in (1, 2):
            wall, summary = timed(devices)
            walls[devices].append(wall)
            accs[devices] = summary["student_test_acc"]
            rates[devices].append(summary["samples_per_s"])
    one, two = statistics.median(walls[1]), statistics.median(walls[2])
    rate_one, rate_two = statistics.median(rates[1]), statistics.median(rates[2])
    result = {"one_process_s": round(one, 2), "two_processes_s": round(two, 2), "ratio": round(two / one, 2),
              "student_samples_per_s_1": round(rate_one), "student_samples_per_s_2": round(rate_two),
              "student_test_acc_1": accs[1], "student_test_acc_2": accs[2],
              "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "machine": platform.processor() or platform.machine()}
    print(f"devices=1: {one:.2f} s   devices=2 (gloo, same cores): {two:.2f} s   ratio {two / one:.2f}")
    print(f"student steps: {rate_one:.0f} vs {rate_two:.0f} samples/s (the peer's start excluded)")
    print(f"student test acc: {accs[1]:.4f} vs {accs[2]:.4f}   load average {result['load_average']:.1f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
