"""N runs on a local Ray cluster of 2 CPUs against the same N runs on local workers (KDCORE_MAX_RUNS=2),
measured in one run: the per-run overhead of the Ray executor, and whether the results are the same.

    python bench/ray_executor.py [--runs 24] [--json]

Each side has a fresh store whose teacher is trained first (one foreground run), so every run reuses the
cached teacher. The N runs (digits, 1 epoch, seeds 0..N-1) are submitted one by one from this process
(separate submits: no stacking, one worker per run) and waited for. Two run at a time on either side, so a
slot trains N/2 runs one after another: the per-run overhead is (wall on Ray - wall local) / (N/2). The
Ray side includes placing each run's actor and its worker's start on the node; not the one-off start of
the cluster, timed apart. The students' test accuracies are compared seed by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset=digits", "epochs=1", "teacher.epochs=1", "baseline=false"]


def side(executor: str, runs: int, root: Path) -> dict:
    """Train the teacher, then `runs` runs with this executor; their wall time and accuracies."""
    os.environ.update({"KDCORE_HOME": str(root / executor), "KDCORE_EXECUTOR": executor, "KDCORE_MAX_RUNS": "2"})
    subprocess.run([sys.executable, "-m", "kdcore", "run", *[a for v in TINY for a in ("--set", v)], "--json"],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, "KDCORE_EXECUTOR": "local"})
    from kdcore.config import build_config
    from kdcore.runner import Runner

    runner = Runner()
    started = time.perf_counter()
    run_ids = [runner.submit(build_config(None, [*TINY, f"seed={seed}"])) for seed in range(runs)]
    records = runner.wait(run_ids, poll_s=0.2)
    wall = time.perf_counter() - started
    assert all(r.status == "done" for r in records), [(r.id, r.status, r.error) for r in records]
    return {"wall_s": wall, "accuracies": [r.summary["student_test_acc"] for r in records],
            "claim_to_end_s": sum(r.ended - r.started for r in records) / len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kd-bench-ray-"))
    (root / "auth_token").write_text(secrets.token_hex(32))
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN_PATH": str(root / "auth_token"), "RAY_USAGE_STATS_ENABLED": "0"})
    load_before = os.getloadavg()[0]
    local = side("local", args.runs, root)
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False, configure_logging=False)
    cluster_start = time.perf_counter() - t0
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    on_ray = side("ray", args.runs, root)
    ray.shutdown()
    slot_runs = args.runs / 2
    result = {
        "runs": args.runs, "local_wall_s": round(local["wall_s"], 2), "ray_wall_s": round(on_ray["wall_s"], 2),
        "ray_overhead_per_run_s": round((on_ray["wall_s"] - local["wall_s"]) / slot_runs, 2),
        "ray_cluster_start_s": round(cluster_start, 2),
        "local_claim_to_end_s": round(local["claim_to_end_s"], 2), "ray_claim_to_end_s": round(on_ray["claim_to_end_s"], 2),
        "same_accuracies": local["accuracies"] == on_ray["accuracies"],
        "max_accuracy_difference": max(abs(a - b) for a, b in zip(local["accuracies"], on_ray["accuracies"])),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    print(f"{args.runs} runs, 2 at a time: local {result['local_wall_s']} s, Ray {result['ray_wall_s']} s "
          f"→ {result['ray_overhead_per_run_s']} s per run (cluster start {result['ray_cluster_start_s']} s, "
          f"apart); same accuracies: {result['same_accuracies']}; load {result['load_average']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
