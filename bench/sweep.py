"""A 15-run sweep (5 temperatures × 3 KD weights, shared teacher) end to end, against the same 15
runs submitted one by one, measured in one run.

    python bench/sweep.py [--dataset mnist-5k] [--epochs 30] [--json]

Both go through real worker processes and the run store (KDCORE_MAX_RUNS=1, a fresh KDCORE_HOME).
The teacher is trained once first, so both sides reuse the same cached teacher. (a) `kdcore sweep`
lets one worker train the compatible runs as a group (stacked students, shared soft labels, one
baseline); (b) 15 separate `submit`s run one worker per run. Also checks that each configuration's
student reaches the same test accuracy both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TEMPERATURES = (1, 2, 4, 8, 16)
KD_WEIGHTS = (0.1, 0.5, 0.9)


def kdcore(env: dict, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "kdcore", *args, "--json"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="kd-sweep-bench-")
    env = {**os.environ, "KDCORE_HOME": home, "KDCORE_MAX_RUNS": "1"}
    base = ["--set", f"dataset={args.dataset}", "--set", f"epochs={args.epochs}"]

    kdcore(env, "run", *base, "--set", "epochs=1", "--set", "baseline=false")  # trains and caches the teacher

    started = time.perf_counter()
    sweep = kdcore(env, "sweep", *base, "--grid", "temperature=" + ",".join(map(str, TEMPERATURES)),
                   "--grid", "weights.kd=" + ",".join(map(str, KD_WEIGHTS)), "--wait")
    sweep_s = time.perf_counter() - started

    started = time.perf_counter()
    ids = [kdcore(env, "submit", *base, "--set", f"temperature={t}", "--set", f"weights.kd={w}")["run_id"]
           for t in TEMPERATURES for w in KD_WEIGHTS]
    while True:
        statuses = [kdcore(env, "status", run_id) for run_id in ids]
        if all(s["status"] in ("done", "failed", "cancelled") for s in statuses):
            break
        time.sleep(0.5)
    sequential_s = time.perf_counter() - started

    grouped = {(r["temperature"], r["weights.kd"]): r["student_test_acc"] for r in sweep["results"]}
    alone = {(s["config"]["temperature"], s["config"]["weights"]["kd"]): s.get("student_test_acc") for s in statuses}
    max_diff = max(abs(grouped[k] - alone[k]) for k in grouped)
    out = {
        "runs": len(ids),
        "sweep_s": sweep_s,
        "sequential_s": sequential_s,
        "speedup": sequential_s / sweep_s,
        "max_student_acc_difference": max_diff,
        "all_done": all(s["status"] == "done" for s in statuses) and all(r["status"] == "done" for r in sweep["results"]),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "setup": f"{args.dataset}, default preset, {args.epochs} epochs, 5 temperatures x 3 KD weights",
    }
    print(f"15-run sweep: {sweep_s:.1f} s; the same 15 runs one by one: {sequential_s:.1f} s; "
          f"speed-up {out['speedup']:.1f}x; largest student accuracy difference {max_diff:.2e}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
